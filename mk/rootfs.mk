# rules for rootfs
.PHONY: rootfs check-rootfs
rootfs:
check-rootfs:
