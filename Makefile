# MedSeg developer entry points. `make demo` and `make test` set everything up first
# (idempotent: re-running only reinstalls when pyproject.toml changed).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.medseg-setup-stamp
# nnU-Net v2 (optional, for `medseg deepseg import` of nnU-Net models and its test): these go in with --no-deps,
# their other requirements are pyproject's `nnunet` extra (their declared ones would pull timm, torchvision, ...).
NNUNET_NO_DEPS := nnunetv2==2.8.1 acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
APT_PACKAGES := dcm2niix orthanc orthanc-dicomweb dicom3tools chromium chromium-driver

.PHONY: setup demo test lint bench clean system-packages

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the CPU wheel from this machine's disk; unpinned it pulls a CUDA build.
	$(VPY) -m pip install --quiet torch==2.13.0
	$(VPY) -m pip install --quiet -e '.[test,nnunet]'
	$(VPY) -m pip install --quiet --no-deps $(NNUNET_NO_DEPS)
	touch $(STAMP)

# Debian tools the tests and benchmarks compare against (needs root; skipped when already present).
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "note: Debian packages missing ($$missing); install them with sudo apt-get install -y$$missing"; fi; \
	fi

demo: setup
	$(VENV)/bin/medseg demo --out medseg-demo

lint: setup
	$(VENV)/bin/ruff check .

test: setup system-packages
	$(VENV)/bin/ruff check .
	$(VPY) -m pytest -q

bench: setup system-packages
	for b in Testing/benchmarks/bench_*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info medseg-demo .pytest_cache .ruff_cache
