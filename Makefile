# kbox build entry point. Each area keeps its rules in mk/<area>.mk; this file only wires
# them together. `make` builds the static kbox, `make check` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := all

ARCH ?= x86_64
HOST_ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
  TARGET := x86_64-unknown-linux-musl
  CROSS_CC := gcc
else ifeq ($(ARCH),aarch64)
  TARGET := aarch64-unknown-linux-musl
  CROSS_CC := aarch64-linux-gnu-gcc
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER := aarch64-linux-gnu-gcc
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER := qemu-aarch64-static
  export CC_aarch64_unknown_linux_musl := aarch64-linux-gnu-gcc
  export AR_aarch64_unknown_linux_musl := aarch64-linux-gnu-ar
else
  $(error ARCH must be x86_64 or aarch64, not '$(ARCH)')
endif

TOP := $(CURDIR)
BUILD := $(TOP)/build
KBOX_CACHE ?= $(HOME)/.cache/kbox
export KBOX_CACHE
CARGO ?= cargo
PROFILE ?= release
KBOX_BIN := $(TOP)/target/$(TARGET)/$(PROFILE)/kbox

include mk/deps.mk
include mk/lkl.mk
include mk/core.mk
include mk/arch.mk
include mk/rootfs.mk
include mk/kbox.mk
include mk/bench.mk
include mk/conformance.mk
include mk/vm.mk

.PHONY: all check fmt-check clippy clean help

all: kbox

check: deps fmt-check clippy check-kbox-other-arch check-core check-arch check-lkl check-rootfs check-vm-scripts check-kbox check-conformance check-bench
	@echo "make check: all suites passed"

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: deps lkl
	KBOX_LKL_DIR=$(LKL_OUT) $(CARGO) clippy --workspace --all-targets --target $(TARGET) -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

help:
	@echo "make              build target/$(TARGET)/release/kbox (static)"
	@echo "make check        every test, fmt and clippy"
	@echo "make ARCH=aarch64 cross build for aarch64"
	@echo "make deps         install build/test dependencies (idempotent)"
	@echo "make lkl          build the kernel library (cached in $(KBOX_CACHE))"
	@echo "make rootfs       build the default guest image build/rootfs-$(ARCH).ext4"
	@echo "make rootfs-debian  Debian bookworm image build/debian-$(ARCH).ext4 (root)"
	@echo "make check-rootfs-debian  check that image; make check-guest-native  guest tests on the host"
	@echo "make bench        benchmarks (not tests)"

.PHONY: bench
bench: bench-core bench-lkl bench-guest
