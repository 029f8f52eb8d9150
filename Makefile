# Every target sets up what it needs: a .venv with the Python deps, openssh-server and
# faketime, etcd-server, swtpm and tpm2-tools (through apt when running as root; otherwise a message
# saying what to install);
# test-slow also qemu-system-x86, qemu-utils, mmdebstrap, e2fsprogs, chromium, and libvirt
# (libvirt-daemon-system, libvirt-daemon-driver-qemu; libvirt-dev, pkg-config, gcc and python3-dev to
# build libvirt-python into the venv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-slow lint typecheck bench setup sshd faketime etcd vtpm slow-deps clean

setup: $(STAMP) sshd faketime etcd vtpm

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

sshd:
	@bash scripts/ensure-sshd.sh

faketime:
	@bash scripts/ensure-faketime.sh

etcd:
	@bash scripts/ensure-etcd.sh

vtpm:
	@bash scripts/ensure-vtpm.sh

demo: setup
	$(BIN)/duet demo

test: setup
	$(BIN)/python -m pytest -q -n 2

slow-deps: setup
	@bash scripts/ensure-slow-deps.sh
	@bash scripts/ensure-chromium.sh
	@$(BIN)/python -c 'import libvirt' 2>/dev/null || $(BIN)/pip install -q -e '.[libvirt]'

# -rs: the only tests allowed to skip (live clouds, which need accounts) say why.
test-slow: setup slow-deps
	$(BIN)/python -m pytest -q -rs -m slow

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src/duet

bench: setup
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/verify.py

clean:
	rm -rf $(VENV) build *.egg-info

# SGX packaging: gramine-image, gramine-mrenclave, gramine-manifest (see deploy/gramine/README.md).
include deploy/gramine/gramine.mk
