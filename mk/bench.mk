# `make bench`: numbers, never tests. The guest micro-benchmark and workloads natively, under
# kbox's tiers and under proot, side by side in one run (scripts/bench/bench.py).
#   BENCH_CALLS=N   calls per batch of the micro-benchmark (default 20000)
#   BENCH_RUNS=N    runs per workload, the median is reported (default 5)
#   SAVE=1          also write the table to bench/results/<date>-<cpu>.md
BENCH_CALLS ?= 20000
BENCH_RUNS ?= 5
BENCH_PY := python3 $(TOP)/scripts/bench/bench.py --kbox $(KBOX_BIN) --image $(ROOTFS_IMG) \
  --debian $(DEBIAN_IMG)
.PHONY: bench-guest check-bench
bench-guest: kbox $(ROOTFS_IMG) $(DEBIAN_IMG)
	@$(BENCH_PY) --calls $(BENCH_CALLS) --runs $(BENCH_RUNS) $(if $(SAVE),--save $(TOP)/bench/results)

# make check keeps the benchmark working: every column, every row, tiny sizes, no timing claim.
check-bench: kbox $(ROOTFS_IMG) $(DEBIAN_IMG)
	@$(BENCH_PY) --calls 20 --runs 1 --scale-down 100 >/dev/null
