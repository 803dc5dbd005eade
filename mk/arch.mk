# rules for arch: decoders, site scanners, patch planners and trampolines (arch/).
# check-arch: fmt + clippy of kbox-arch on both targets, host tests (objdump comparisons,
# in-process patched x86-64 code), AArch64 execution tests under qemu-user, fuzz smoke.
ARCH_CARGO_ENV := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
ARCH_FUZZ_DIR := $(TOP)/arch/fuzz
ARCH_FUZZ_TARGETS := x86_64_decode elf_parse load_plan
# cargo-fuzz needs -Z flags; RUSTC_BOOTSTRAP lets the stable toolchain (which ships the
# ASan runtime) accept them, so CI needs no nightly.
ARCH_FUZZ := cd $(ARCH_FUZZ_DIR) && RUSTC_BOOTSTRAP=1 $(CARGO) +stable fuzz
FUZZ_SECONDS ?= 120
ARCH_SMOKE_SECONDS ?= 20

.PHONY: check-arch check-arch-host check-arch-aarch64 fuzz fuzz-smoke arch-fuzz-tools

check-arch: check-arch-host check-arch-aarch64 fuzz-smoke

check-arch-host:
	$(CARGO) fmt -p kbox-arch -- --check
	$(ARCH_CARGO_ENV) $(CARGO) clippy -p kbox-arch --all-targets -- -D warnings
	$(ARCH_CARGO_ENV) $(CARGO) clippy -p kbox-arch --all-targets --target aarch64-unknown-linux-musl -- -D warnings
	KBOX_ARM64_BUSYBOX_DIR=$$($(TOP)/scripts/fetch-deb.sh busybox-static arm64) \
		$(CARGO) test -p kbox-arch

# Only what executes AArch64 code runs under qemu; the byte analysis is tested on the host.
check-arch-aarch64:
	$(ARCH_CARGO_ENV) $(CARGO) test -p kbox-arch --target aarch64-unknown-linux-musl --lib --test aarch64_exec

arch-fuzz-tools:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz

# Short runs of each target; together they stay under a minute once built.
fuzz-smoke: arch-fuzz-tools
	@for t in $(ARCH_FUZZ_TARGETS); do \
		$(ARCH_FUZZ) run $$t -- -max_total_time=$(ARCH_SMOKE_SECONDS) -print_final_stats=0 || exit 1; \
	done

fuzz: arch-fuzz-tools
	@for t in $(ARCH_FUZZ_TARGETS); do \
		$(ARCH_FUZZ) run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
