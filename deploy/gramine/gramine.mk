# Gramine-SGX targets (included by the top-level Makefile). Nothing here runs as part of
# `make test`; every target works without SGX hardware, and says what is missing when
# neither Docker nor Gramine is installed.
#
#   make gramine-image       build the reproducible enclave image (Docker)
#   make gramine-mrenclave   print MRENCLAVE (from the image, or from a local .sig)
#   make gramine-manifest    render + sign locally with an installed Gramine (no Docker)

# Keep the including Makefile's default goal (an include must not make gramine-image the default).
_gramine_saved_goal := $(.DEFAULT_GOAL)

GRAMINE_DIR       ?= deploy/gramine
GRAMINE_IMAGE     ?= duet-controller:gramine
GRAMINE_BUILD     ?= build/gramine
GRAMINE_SITE      ?= /opt/duet/lib
GRAMINE_LIBVIRT   ?= 0
GRAMINE_PYTHON    ?= $(shell command -v python3 2>/dev/null)
GRAMINE_ARCH_LIB  ?= /lib/$(shell $(CC) -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
SOURCE_DATE_EPOCH ?= 1767225600

.PHONY: gramine-image gramine-mrenclave gramine-manifest

gramine-image:
	@command -v docker >/dev/null 2>&1 || { echo "gramine-image needs Docker (docker build)"; exit 1; }
	docker build --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) --build-arg DUET_LIBVIRT=$(GRAMINE_LIBVIRT) \
		-f $(GRAMINE_DIR)/Dockerfile -t $(GRAMINE_IMAGE) .

# MRENCLAVE, one lowercase hex line on stdout. Prefers the Docker image (reproducible
# build); falls back to a locally signed $(GRAMINE_BUILD)/duet-controller.sig.
gramine-mrenclave:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker image inspect $(GRAMINE_IMAGE) >/dev/null 2>&1 || $(MAKE) --no-print-directory gramine-image >&2; \
		docker run --rm --entrypoint gramine-sgx-sigstruct-view $(GRAMINE_IMAGE) \
			--output-format toml /duet/duet-controller.sig | sed -n 's/^mr_enclave = "\([0-9a-f]*\)"/\1/p'; \
	elif command -v gramine-sgx-sigstruct-view >/dev/null 2>&1 && [ -f $(GRAMINE_BUILD)/duet-controller.sig ]; then \
		gramine-sgx-sigstruct-view --output-format toml $(GRAMINE_BUILD)/duet-controller.sig \
			| sed -n 's/^mr_enclave = "\([0-9a-f]*\)"/\1/p'; \
	else \
		echo "gramine-mrenclave needs a Docker engine (make gramine-image) or Gramine with a signed" >&2; \
		echo "$(GRAMINE_BUILD)/duet-controller.sig (make gramine-manifest); see $(GRAMINE_DIR)/README.md" >&2; \
		exit 1; \
	fi

# Local build with an installed Gramine: the wheels and duet go to $(GRAMINE_SITE) (which
# must match the image's path for the same MRENCLAVE). Signs with your Gramine key
# ($$HOME/.config/gramine/enclave-key.pem, gramine-sgx-gen-private-key).
gramine-manifest:
	@command -v gramine-manifest >/dev/null 2>&1 || { echo "gramine-manifest not found: install Gramine (https://gramine.readthedocs.io) or use make gramine-image"; exit 1; }
	mkdir -p $(GRAMINE_BUILD)
	gramine-manifest -Dentrypoint=$$(realpath $(GRAMINE_PYTHON)) -Darch_libdir=$(GRAMINE_ARCH_LIB) \
		-Dduet_site=$(GRAMINE_SITE) -Dlibvirt=$(GRAMINE_LIBVIRT) $(GRAMINE_DIR)/duet-controller.manifest.template \
		> $(GRAMINE_BUILD)/duet-controller.manifest
	gramine-sgx-sign --date 0000-00-00 --manifest $(GRAMINE_BUILD)/duet-controller.manifest \
		--output $(GRAMINE_BUILD)/duet-controller.manifest.sgx
	@$(MAKE) --no-print-directory gramine-mrenclave

.DEFAULT_GOAL := $(_gramine_saved_goal)
