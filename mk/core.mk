# rules for core
.PHONY: check-core
check-core:
