# rules for kbox
.PHONY: kbox check-kbox
kbox: deps lkl
	KBOX_LKL_DIR=$(LKL_OUT) $(CARGO) build --release --target $(TARGET) --bin kbox
check-kbox: deps lkl $(ROOTFS_IMG) $(DEBIAN_IMG) $(GUEST_BINS)
	KBOX_LKL_DIR=$(LKL_OUT) KBOX_ROOTFS=$(abspath $(ROOTFS_IMG)) KBOX_DEBIAN=$(abspath $(DEBIAN_IMG)) KBOX_GUEST_BINS=$(GUEST_DIR) \
	  $(CARGO) test --target $(TARGET) --bin kbox --test cli --test guest --test escape

# The README's first command: build everything and run the default image.
.PHONY: run
run: kbox rootfs
	$(KBOX_BIN) -S $(BUILD)/rootfs-$(ARCH).ext4 -- /bin/sh -i
