# rules for kbox
.PHONY: kbox check-kbox
kbox: deps lkl
	KBOX_LKL_DIR=$(LKL_OUT) $(CARGO) build --release --target $(TARGET) --bin kbox
# One test at a time: two kbox instances at once load the 2-core machines enough to widen
# the EINTR window of a notified close (docs/dispatch.md, limits; issue 22), which a shell
# pipeline can hang on.
check-kbox: deps lkl $(ROOTFS_IMG) $(DEBIAN_IMG) $(GUEST_BINS)
	KBOX_LKL_DIR=$(LKL_OUT) KBOX_ROOTFS=$(abspath $(ROOTFS_IMG)) KBOX_DEBIAN=$(abspath $(DEBIAN_IMG)) KBOX_GUEST_BINS=$(GUEST_DIR) \
	  $(CARGO) test --target $(TARGET) --bin kbox --test cli --test guest --test escape --test observe --test network -- --test-threads=1

# The README's first command: build everything and run the default image.
.PHONY: run
run: kbox rootfs
	$(KBOX_BIN) -S $(BUILD)/rootfs-$(ARCH).ext4 -- /bin/sh -i
