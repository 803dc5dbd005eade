# rules for arch
.PHONY: check-arch
check-arch:
