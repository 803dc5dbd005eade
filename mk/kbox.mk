# rules for kbox
.PHONY: kbox check-kbox
kbox: deps lkl
	KBOX_LKL_DIR=$(LKL_OUT) $(CARGO) build --release --target $(TARGET) --bin kbox
# One test at a time: two kbox instances at once load the 2-core machines enough to widen
# the EINTR window of a notified close (docs/dispatch.md, limits; issue 22), which a shell
# pipeline can hang on.
check-kbox: deps lkl $(ROOTFS_IMG) $(DEBIAN_IMG) $(GUEST_BINS)
	KBOX_LKL_DIR=$(LKL_OUT) KBOX_ROOTFS=$(abspath $(ROOTFS_IMG)) KBOX_DEBIAN=$(abspath $(DEBIAN_IMG)) KBOX_GUEST_BINS=$(GUEST_DIR) \
	  $(CARGO) test --target $(TARGET) --bin kbox --test cli --test guest --test escape --test observe --test network --test image --test inprocess -- --test-threads=1

# The other arch's kbox must keep compiling (and pass clippy) without its kernel library,
# whose build is long: against a stand-in of an empty archive and the asm-generic syscall
# numbers (the same for both arches' library). Linking is `make ARCH=...`'s job.
OTHER_TARGET := $(if $(filter x86_64,$(ARCH)),aarch64-unknown-linux-musl,x86_64-unknown-linux-musl)
LKL_STANDIN := $(BUILD)/lkl-standin
.PHONY: check-kbox-other-arch
check-kbox-other-arch: deps lkl
	@mkdir -p $(LKL_STANDIN) && cp $(LKL_OUT)/unistd_64.h $(LKL_STANDIN)/ && rm -f $(LKL_STANDIN)/liblkl.a && ar rc $(LKL_STANDIN)/liblkl.a
	KBOX_LKL_DIR=$(LKL_STANDIN) CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
	  $(CARGO) clippy --target $(OTHER_TARGET) --bin kbox -- -D warnings

# The README's first command: build everything and run the default image.
.PHONY: run
run: kbox rootfs
	$(KBOX_BIN) -S $(BUILD)/rootfs-$(ARCH).ext4 -- /bin/sh -i
