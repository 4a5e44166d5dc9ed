# mk/system.mk — Debian programs the tests run for real, installed by `make test` as root.
#
#   make system-tools   Prometheus (scrapes the pod agent's /metrics: tests/agent/test_prometheus*.py)
#                       and Chromium (opens `primus-lens report` headless: tests/view/), each only
#                       if its command is missing; as root with apt-get, otherwise it says what to run
#
# Each entry is command:package. Debian names both programs after their package (prometheus also
# brings promtool). No recommends: prometheus would pull in the node exporter, chromium a desktop.
SYSTEM_TOOLS := prometheus:prometheus chromium:chromium

# Under make these tests must run: a missing program fails them instead of skipping them. Without
# root nothing can be installed, so there they only skip (as the image test does).
PRIMUS_LENS_REQUIRE_TOOLS += $(if $(filter 0,$(shell id -u)),prometheus chromium)

TEST_PREREQS += system-tools

.PHONY: system-tools

system-tools:
	@missing=; for entry in $(SYSTEM_TOOLS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$${entry%%:*}" >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "mk/system.mk: missing$$missing; as root: apt-get install --no-install-recommends$$missing" \
	    "(the Prometheus and browser tests skip)" >&2; \
	  exit 0; fi; \
	echo "mk/system.mk: installing$$missing from Debian (the Prometheus and browser tests run them)"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing
