# The kernel library: `make lkl` builds (or finds in $(KBOX_CACHE)) liblkl.a for $(ARCH).
LKL_OUT := $(BUILD)/lkl-$(ARCH)
LKL_ENV := KBOX_LKL_DIR=$(LKL_OUT)
.PHONY: lkl check-lkl bench-lkl

lkl: deps
	@$(TOP)/lkl/build-kernel.sh $(ARCH) $(LKL_OUT)

# The library's own tests boot it in-process; an aarch64 build is compile-checked only
# (qemu-user cannot run a kernel that blocks on futexes across many threads reliably).
check-lkl: lkl
ifeq ($(ARCH),$(HOST_ARCH))
	$(LKL_ENV) $(CARGO) test -p kbox-lkl --target $(TARGET)
	@# The benchmark is not a test, but it must keep working: run it once, tiny.
	KBOX_BENCH_CALLS=100 $(LKL_ENV) $(CARGO) run -q -p kbox-lkl --target $(TARGET) --example bench_lkl >/dev/null
else
	$(LKL_ENV) $(CARGO) build -p kbox-lkl --tests --target $(TARGET)
endif

bench-lkl: lkl
	$(LKL_ENV) $(CARGO) run -q --release -p kbox-lkl --target $(TARGET) --example bench_lkl
	@if [ -f lkl/examples/bench_disk.rs ]; then \
		$(LKL_ENV) $(CARGO) run -q --release -p kbox-lkl --target $(TARGET) --example bench_disk; fi
