# CPython's own regression suite judges kbox (issue 22): `make conformance` runs the OS-facing
# tests natively (chroot of the Debian image's tree, as root) and under kbox -S, and prints a
# table per test; CONFORMANCE_TESTS picks tests (default: the list in the script).
# check-conformance, part of `make check`, is a fast subset whose results must match.
.PHONY: conformance check-conformance
CONFORMANCE_TESTS ?=
CONFORMANCE_FAST := test_fcntl test_poll test_select test_fileio test_tempfile

conformance: kbox $(DEBIAN_IMG)
	@$(TOP)/scripts/conformance/run.sh $(ARCH) $(KBOX_BIN) $(DEBIAN_IMG) $(CONFORMANCE_TESTS)

check-conformance: kbox $(DEBIAN_IMG)
ifeq ($(ARCH),$(HOST_ARCH))
	@$(TOP)/scripts/conformance/run.sh $(ARCH) $(KBOX_BIN) $(DEBIAN_IMG) $(CONFORMANCE_FAST)
else
	@echo "check-conformance: skipped for ARCH=$(ARCH) (runs on the host's own arch only)"
endif
