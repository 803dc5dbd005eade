# `make bench`: numbers, never tests. Guest micro-benchmark natively and under proot (and
# kbox's tiers as they land), side by side in one run.
BENCH_CALLS ?= 20000
.PHONY: bench-guest
bench-guest: rootfs
	@$(TOP)/scripts/bench/guest.sh $(ROOTFS_IMG) $(BENCH_CALLS)
