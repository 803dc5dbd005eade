# make check-vm: kbox's guest suite inside Debian's own kernels under qemu-system, one line
# per machine and a closing count (scripts/vm/). Not part of `make check`: too slow on
# 2 cores. KBOX_VM_TIMEOUT (seconds, default 1800) bounds each machine.
.PHONY: deps-vm check-vm check-vm-x86_64 check-vm-aarch64
VM_OUT := $(BUILD)/vm
# What check-kbox runs, built the same way (debug test binaries, a debug kbox).
VM_TESTS := --bin kbox --test cli --test guest --test escape --test observe --test network --test inprocess
VM_TESTS_AARCH64 := --bin kbox --test cli --test guest --test escape --test observe --test inprocess
# The dashboard in headless Chromium checks kbox's web page, not the kernel, and under
# TCG Chromium does not answer within the check's limits.
VM_BROWSER_TEST := web_page_renders_and_updates_in_a_real_browser
VM_BROWSER_WHY := under TCG headless Chromium does not answer within the check's limits (make check runs it)

deps-vm: deps
	@$(TOP)/scripts/vm/deps.sh

check-vm: deps-vm
	@rm -f $(VM_OUT)/results
	@mkdir -p $(VM_OUT)
	@$(MAKE) --no-print-directory check-vm-x86_64 || true
	@$(MAKE) --no-print-directory check-vm-aarch64 || true
	@$(TOP)/scripts/vm/summary.sh $(VM_OUT)/results

check-vm-x86_64: deps-vm
	@$(MAKE) --no-print-directory ARCH=x86_64 lkl rootfs rootfs-debian guest-tests
	@mkdir -p $(VM_OUT)
	KBOX_LKL_DIR=$(BUILD)/lkl-x86_64 $(CARGO) test --target x86_64-unknown-linux-musl $(VM_TESTS) \
	  --no-run --message-format=json 2>/dev/null | $(TOP)/scripts/vm/test-list.py \
	  KBOX_CHECKOUT=$(TOP) KBOX_ROOTFS=$(BUILD)/rootfs-x86_64.ext4 KBOX_DEBIAN=$(BUILD)/debian-x86_64.ext4 \
	  KBOX_GUEST_BINS=$(BUILD)/guest-x86_64 HOME=/root "--skip=$(VM_BROWSER_TEST):$(VM_BROWSER_WHY)" \
	  >$(VM_OUT)/x86_64.list
	@$(TOP)/scripts/vm/run-vm.sh x86_64 $(VM_OUT)/x86_64.list $(VM_OUT) | tee -a $(VM_OUT)/results

# aarch64 runs in the Debian arm64 image (its sh, cp, e2fsck, debugfs, python3), with the
# checkout shared at its own path, so the cross-built test binaries find what they were
# built against.
check-vm-aarch64: deps-vm
	@$(MAKE) --no-print-directory ARCH=aarch64 lkl rootfs rootfs-debian guest-tests kbox
	@mkdir -p $(VM_OUT)
	KBOX_LKL_DIR=$(BUILD)/lkl-aarch64 \
	  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
	  CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
	  $(CARGO) test --target aarch64-unknown-linux-musl $(VM_TESTS_AARCH64) \
	  --no-run --message-format=json 2>/dev/null | $(TOP)/scripts/vm/test-list.py \
	  KBOX_CHECKOUT=$(TOP) KBOX_ROOTFS=$(BUILD)/rootfs-aarch64.ext4 KBOX_DEBIAN=$(BUILD)/debian-aarch64.ext4 \
	  KBOX_GUEST_BINS=$(BUILD)/guest-aarch64 HOME=/root \
	  "--skip=$(VM_BROWSER_TEST):chromium is not in the arm64 Debian image; $(VM_BROWSER_WHY)" \
	  >$(VM_OUT)/aarch64.list
	@echo "bench $(TOP)/target/aarch64-unknown-linux-musl/release/kbox $(BUILD)/rootfs-aarch64.ext4 $(BUILD)/guest-aarch64" >>$(VM_OUT)/aarch64.list
	@$(TOP)/scripts/vm/run-vm.sh aarch64 $(VM_OUT)/aarch64.list $(VM_OUT) $(BUILD)/debian-aarch64.ext4 | tee -a $(VM_OUT)/results

# The logic of check-vm without a VM (part of make check).
.PHONY: check-vm-scripts
check-vm-scripts:
	@$(TOP)/tests/vm/test-scripts.sh
