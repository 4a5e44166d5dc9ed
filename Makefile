# primus-lens-inject — everything a user or CI needs, from a fresh checkout.
#   make demo   a 4-rank job (examples/demo_train.py) under the injector, reporting to the built-in
#               receiver (Lens and OTLP), then its report; in .venv-demo (the package and wandb only)
#   make test   lint (ruff, mypy) + the whole suite against the wheel built from this checkout (newest wandb),
#               then the wandb_compat and layouts tests against the image layout (wandb 0.12.21)
#   make bench  the benchmarks in bench/ (baseline, patched, ratio; medians)

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
OLD_WANDB  ?= 0.12.21
OLD_VENV   ?= .venv-wandb-$(OLD_WANDB)
OLD_PY     := $(OLD_VENV)/bin/python
DEMO_VENV  ?= .venv-demo
DEMO_PY    := $(DEMO_VENV)/bin/python
PIP_FLAGS  ?= -q --disable-pip-version-check
# pytest-xdist workers for `make test`. The suite mostly waits on real processes (run serially it
# keeps about a third of two CPUs busy), so it runs twice as many workers as CPUs, 4 to 8;
# TEST_WORKERS=0 runs it serially, in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 4 : n > 4 ? 8 : 2 * n )))
PYTEST     := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup
TORCH_WHEELS ?= /opt/wheels

# Fragments in mk/ add their own targets and append prerequisites of `make test` here, and the
# programs the tests must find (a missing one fails them instead of skipping: tests/k8s/support.py).
TEST_PREREQS :=
export PRIMUS_LENS_REQUIRE_TOOLS :=
-include mk/*.mk

.PHONY: install install-old install-demo demo screenshot test test-core test-old lint bench clean
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

# The demo's own light environment: what a user of the wheel has (its runtime dependencies) and
# wandb; editable, so it runs this checkout as it is. No torch, no test tools: seconds, not minutes.
install-demo: $(DEMO_VENV)/.installed
$(DEMO_VENV)/.installed: pyproject.toml setup.py
	@echo "demo: creating $(DEMO_VENV), a virtualenv with only this package, its dependencies and wandb"
	$(PYTHON) -m venv $(DEMO_VENV)
	@echo "demo: installing primus-lens-inject from this checkout (editable) and wandb"
	$(DEMO_PY) -m pip install $(PIP_FLAGS) -e . wandb
	touch $@

demo: install-demo
	@echo "demo: running examples/demo.py with $(DEMO_PY)"
	@$(DEMO_PY) examples/demo.py

# The README's picture (docs/images/report.png): the demo's report in headless Chromium. Pillow
# (tensorboard brings it into .venv) shrinks it to a palette image.
screenshot: install system-tools
	$(PY) examples/demo_screenshot.py

lint: install
	$(PY) -m ruff check primus_lens_inject sitecustomize tests bench examples setup.py
	$(PY) -m mypy primus_lens_inject sitecustomize

# The .venvs' editable installs serve the unit tests only: every training subprocess runs the
# injector as users get it, built afresh from the working tree by tests/installs.py (the wheel in
# a new virtualenv; the Dockerfile's tree), with the .venv's wandb and other dependencies.
test: lint install-old $(TEST_PREREQS)
	PRIMUS_LENS_TEST_INSTALL=wheel $(PYTEST)
	PRIMUS_LENS_TEST_INSTALL=image PRIMUS_LENS_TEST_PYTHON=$(abspath $(OLD_PY)) \
	  $(PYTEST) -m "wandb_compat or layouts" -p no:cacheprovider

# Every bench/*.py (bench-webhook runs bench/webhook_latency.py; tests/test_docs.py checks that
# none is left out), at the shapes the issues name; the scrape bench scrapes 40 times a second
# apart per format instead of 60 two seconds apart (about 1.5 minutes instead of 4). report_scale
# renders in Chromium, which system-tools installs as root (mk/system.mk).
bench: install system-tools
	$(PY) bench/startup.py
	$(PY) bench/log_overhead.py
	$(PY) bench/sampler_cost.py
	$(PY) bench/reporter_throughput.py
	$(PY) bench/pulse_cost.py
	$(PY) bench/agent_requests.py
	$(PY) bench/metrics_scrape.py --scrapes 40 --interval 1
	$(PY) bench/report_scale.py
	$(MAKE) bench-webhook

clean:
	rm -rf $(VENV) $(OLD_VENV) $(DEMO_VENV) demo-output .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
