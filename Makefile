# primus-lens-inject — everything a user or CI needs, from a fresh checkout.
#   make demo   run examples/train.py under the injector, reporting to the built-in receiver
#   make test   lint (ruff, mypy) + the whole suite against the wheel built from this checkout (newest wandb),
#               then the wandb_compat and layouts tests against the image layout (wandb 0.12.21)
#   make bench  the benchmarks in bench/ (baseline, patched, ratio; medians)

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
OLD_WANDB  ?= 0.12.21
OLD_VENV   ?= .venv-wandb-$(OLD_WANDB)
OLD_PY     := $(OLD_VENV)/bin/python
PIP_FLAGS  ?= -q --disable-pip-version-check
TORCH_WHEELS ?= /opt/wheels

# Fragments in mk/ add their own targets and append prerequisites of `make test` here.
TEST_PREREQS :=
-include mk/*.mk

.PHONY: install install-old demo test test-core test-old lint bench clean
.DEFAULT_GOAL := demo

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	@# torch only from a local CPU wheel (never a multi-GB download); tensor tests skip without it.
	@# tensorboard, Lightning, transformers and accelerate (integration and detection tests) come
	@# with it, pinned to that torch (accelerate requires torch: never in the test extra).
	@if ls $(TORCH_WHEELS)/torch-2.13.0*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip install $(PIP_FLAGS) --find-links $(TORCH_WHEELS) "torch==2.13.0" \
	    tensorboard pytorch-lightning "transformers>=4.46" "accelerate>=1.1"; \
	else echo "note: no local torch wheel in $(TORCH_WHEELS); torch tests will be skipped"; \
	  $(PY) -m pip install $(PIP_FLAGS) tensorboard; fi
	touch $@

install-old: $(OLD_VENV)/.installed
$(OLD_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install $(PIP_FLAGS) -e . "wandb==$(OLD_WANDB)" "numpy<2" "protobuf<4"
	touch $@

demo: install
	$(PY) examples/demo.py

lint: install
	$(PY) -m ruff check primus_lens_inject sitecustomize tests bench examples setup.py
	$(PY) -m mypy primus_lens_inject sitecustomize

# The .venvs' editable installs serve the unit tests only: every training subprocess runs the
# injector as users get it, built afresh from the working tree by tests/installs.py (the wheel in
# a new virtualenv; the Dockerfile's tree), with the .venv's wandb and other dependencies.
test: lint install-old $(TEST_PREREQS)
	PRIMUS_LENS_TEST_INSTALL=wheel $(PY) -m pytest
	PRIMUS_LENS_TEST_INSTALL=image PRIMUS_LENS_TEST_PYTHON=$(abspath $(OLD_PY)) \
	  $(PY) -m pytest -m "wandb_compat or layouts" -p no:cacheprovider

bench: install
	$(PY) bench/startup.py
	$(PY) bench/log_overhead.py
	$(PY) bench/sampler_cost.py
	$(PY) bench/reporter_throughput.py
	$(MAKE) bench-webhook

clean:
	rm -rf $(VENV) $(OLD_VENV) .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
