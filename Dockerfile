# primus-lens-inject images.
#
#   injector (default target): the read-only tree /opt/primus-lens (bootstrap, package without the
#       development receiver, which .dockerignore leaves out; private dependencies in deps/), run
#       as non-root. It is the webhook's init-container image (the tree is copied into the pod),
#       runs the webhook server itself, and is the pod agent's image (`primus-lens agent`).
#   training-base: BASE_IMAGE (your training image) with the tree baked in, PYTHONPATH set and the
#       .pth route installed for its python3 (TRAINING_PYTHON).
#
# The build installs the injector's dependencies from wheels in build/wheels (`make image-wheels`
# downloads them), so it needs no registry access beyond the base images:
#   make image-wheels && buildah bud --isolation=chroot -t primus-lens-inject .      (or docker build)
#   docker build --target training-base --build-arg BASE_IMAGE=rocm/pytorch:<tag> -t my-base .

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG BASE_IMAGE=python:3.12-slim-bookworm

# -- tree: everything under /opt/primus-lens, world-readable, owned by root -----------------------
FROM ${PYTHON_IMAGE} AS tree
# Only pure-Python and abi3 wheels are in the wheelhouse: the tree must work for every CPython
# 3.9+ of a training image, not just the one that builds it. Removed: console scripts, and the
# top-level example.py that nvidia-ml-py ships (an `import example` must never find it).
COPY build/wheels/ /tmp/wheels/
RUN python3 -m pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index \
        --only-binary=:all: --find-links /tmp/wheels --target /opt/primus-lens/deps \
        --requirement /tmp/wheels/requirements.txt \
 && rm -rf /opt/primus-lens/deps/bin /opt/primus-lens/deps/example.py /tmp/wheels
COPY sitecustomize/sitecustomize.py /opt/primus-lens/sitecustomize.py
COPY primus_lens_inject/ /opt/primus-lens/primus_lens_inject/
# The package as pip lays it out, bootstrap included (primus_lens_inject._bootstrap), so
# `python -m primus_lens_inject run|doctor` work from the tree as well.
COPY sitecustomize/__init__.py sitecustomize/sitecustomize.py /opt/primus-lens/primus_lens_inject/_bootstrap/
# Bytecode for this image's Python: the tree is read-only where it runs, so a process could never
# cache it there (other Python versions compile in memory, as before).
RUN python3 -m compileall -q /opt/primus-lens \
 && chmod -R u=rwX,go=rX /opt/primus-lens

# -- training-base: FROM your training image, tree baked in ----------------------------------------
FROM ${BASE_IMAGE} AS training-base
# The interpreter your jobs run (a conda env's python, say): it gets the .pth route below.
ARG TRAINING_PYTHON=python3
COPY --from=tree /opt/primus-lens /opt/primus-lens
# Bytecode for the training image's own interpreter too (best effort: an image without one, or one
# whose USER cannot write here, keeps compiling in memory). Then two routes in, activating once:
# the .pth file in TRAINING_PYTHON's site-packages survives a launcher that replaces PYTHONPATH
# with its own sitecustomize (Primus's ODC launcher does); PYTHONPATH reaches every other
# interpreter of the image. The build fails where the .pth cannot be written (a USER without
# write access there: build as root, or set TRAINING_PYTHON).
RUN { "${TRAINING_PYTHON}" -m compileall -q /opt/primus-lens || true; } \
 && PYTHONPATH=/opt/primus-lens "${TRAINING_PYTHON}" -m primus_lens_inject install
# Our directory first; the base image's own PYTHONPATH (if any) is kept after it.
ENV PYTHONPATH=/opt/primus-lens${PYTHONPATH:+:${PYTHONPATH}}

# -- injector: init-container payload and webhook server -------------------------------------------
FROM ${PYTHON_IMAGE} AS injector
LABEL org.opencontainers.image.title="primus-lens-inject" \
      org.opencontainers.image.description="wandb capture for Primus Lens: injector tree and admission webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=tree /opt/primus-lens /opt/primus-lens
# msgspec, the pod agent's JSON (docs/agent.md), built for this image's Python: in a directory of
# its own beside the tree, never in the tree that pods copy (training images run other Pythons).
# A Python with no wheel in build/wheels/agent builds without it; the agent then says it uses the
# standard library's JSON.
COPY build/wheels/agent/ /tmp/agent-wheels/
RUN { python3 -m pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index \
        --only-binary=:all: --find-links /tmp/agent-wheels --target /opt/primus-lens-agent \
        --requirement /tmp/agent-wheels/requirements.txt \
      || echo "no msgspec wheel for this Python: the agent uses the standard library's JSON"; } \
 && rm -rf /tmp/agent-wheels
# deps/ on PYTHONPATH too: the pod agent (`primus-lens agent`, httpx and prometheus_client) must
# import them even where the pod turns the bootstrap off (PRIMUS_LENS_WANDB_HOOK=false), and no
# application here has packages of its own to win over them.
ENV PYTHONPATH=/opt/primus-lens:/opt/primus-lens/deps:/opt/primus-lens-agent \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["python3", "-m", "primus_lens_inject"]
CMD ["--help"]
