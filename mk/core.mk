# kbox-core: host tests (x86_64 musl, the shipping target) and the same tests for aarch64
# under qemu-user. The aarch64 linker and runner are set here explicitly so the rule works
# whatever ARCH the top Makefile was given.
CORE_CARGO := nice -n 10 $(CARGO)
CORE_AARCH64_ENV := \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static

.PHONY: check-core check-core-host check-core-aarch64 bench-core

check-core: check-core-host check-core-aarch64

check-core-host: deps
	$(CORE_CARGO) test -p kbox-core --target x86_64-unknown-linux-musl

check-core-aarch64: deps
	$(CORE_AARCH64_ENV) $(CORE_CARGO) test -p kbox-core --target aarch64-unknown-linux-musl

# Prints lookup and close-by-host-fd cost at growing table sizes; numbers, not a test.
bench-core: deps
	$(CORE_CARGO) run -p kbox-core --release --example fd_bench --target x86_64-unknown-linux-musl
