# Guest images (issue 5), built rootless from Debian packages. See docs/images.md.
#   make rootfs              build/rootfs-$(ARCH).ext4: busybox-static + /etc + guest tests
#   make rootfs-debian       build/debian-$(ARCH).ext4: debootstrap minbase bookworm (root)
#   make guest-tests         build/guest-$(ARCH)/<name> for every tests/guest/<name>.c
#   make check-guest-native  run every guest test on the host (aarch64: under qemu)
#   make check-rootfs        build the default image (cached) and check its tree
#   make check-rootfs-debian build the Debian image (cached) and check it, running its programs
# Images are rebuilt only when an input changes: the scripts, the guest programs, and what
# make cannot see as a file (the .deb version apt would fetch, the size), captured by a key
# file that scripts/rootfs/inputs-key.sh rewrites only when its content changes.

ROOTFS_SIZE_MIB ?= 64
export ROOTFS_SIZE_MIB
# Optional overrides for the Debian image (see scripts/rootfs/build-debian.sh); part of its key.
export DEBIAN_PACKAGES DEBIAN_MIRROR DEBIAN_MAX_MIB
ROOTFS_IMG := $(BUILD)/rootfs-$(ARCH).ext4
DEBIAN_IMG := $(BUILD)/debian-$(ARCH).ext4
ROOTFS_KEY := $(BUILD)/.rootfs-$(ARCH).key
DEBIAN_KEY := $(BUILD)/.debian-$(ARCH).key

GUEST_SRCS := $(sort $(wildcard $(TOP)/tests/guest/*.c))
GUEST_DIR := $(BUILD)/guest-$(ARCH)
GUEST_BINS := $(patsubst $(TOP)/tests/guest/%.c,$(GUEST_DIR)/%,$(GUEST_SRCS))
GUEST_CC := $(TOP)/scripts/rootfs/guest-cc.sh

ROOTFS_SCRIPTS := $(TOP)/scripts/fetch-deb.sh $(TOP)/scripts/rootfs/build-rootfs.sh \
  $(TOP)/scripts/rootfs/stage-busybox.sh $(TOP)/scripts/rootfs/inputs-key.sh
DEBIAN_SCRIPTS := $(TOP)/scripts/rootfs/build-debian.sh $(TOP)/scripts/rootfs/debian-mirror.sh \
  $(TOP)/scripts/rootfs/inputs-key.sh

.PHONY: rootfs rootfs-debian guest-tests check-rootfs check-guest-native check-rootfs-scripts \
  check-rootfs-debian rootfs-key-force

rootfs: $(ROOTFS_IMG)
rootfs-debian: $(DEBIAN_IMG)
guest-tests: $(GUEST_BINS)

# `deps` is order-only: it installs missing tools but never makes an image look out of date.
$(GUEST_DIR)/%: $(TOP)/tests/guest/%.c $(TOP)/tests/guest/check.h $(GUEST_CC) | deps
	@$(GUEST_CC) $(ARCH) $@ $<

$(ROOTFS_KEY): rootfs-key-force | deps
	@mkdir -p $(BUILD)
	@$(TOP)/scripts/rootfs/inputs-key.sh default $(ARCH) $(ROOTFS_SCRIPTS) $(GUEST_SRCS) >$@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(DEBIAN_KEY): rootfs-key-force | deps
	@mkdir -p $(BUILD)
	@$(TOP)/scripts/rootfs/inputs-key.sh debian $(ARCH) $(DEBIAN_SCRIPTS) >$@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(ROOTFS_IMG): $(ROOTFS_KEY) $(ROOTFS_SCRIPTS) $(GUEST_BINS) | deps
	@$(TOP)/scripts/rootfs/build-rootfs.sh $(ARCH) $@ $(ROOTFS_SIZE_MIB) $(GUEST_BINS)

$(DEBIAN_IMG): $(DEBIAN_KEY) $(DEBIAN_SCRIPTS) | deps
	@$(TOP)/scripts/rootfs/build-debian.sh $(ARCH) $@

check-guest-native: $(GUEST_BINS)
	@$(TOP)/tests/rootfs/run-guest-native.sh $(ARCH) $(GUEST_BINS)

# The failure-path tests of the build scripts (bad input, no network, half-written images).
check-rootfs-scripts: | deps
	@$(TOP)/tests/rootfs/test-scripts.sh $(ARCH)

check-rootfs: $(ROOTFS_IMG) check-guest-native check-rootfs-scripts
	@$(TOP)/tests/rootfs/check-image.sh $(ARCH) $(ROOTFS_IMG) $(GUEST_BINS)

# Not part of check-rootfs (debootstrap is slow and needs root); for the integration tests.
check-rootfs-debian: $(DEBIAN_IMG)
	@$(TOP)/tests/rootfs/check-debian-image.sh $(ARCH) $(DEBIAN_IMG)
