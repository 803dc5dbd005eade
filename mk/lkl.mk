# rules for lkl
LKL_OUT ?= $(BUILD)/lkl-$(ARCH)
.PHONY: lkl check-lkl
lkl:
check-lkl:
