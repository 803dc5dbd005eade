# `make deps`: apt packages and rustup targets, installed only when missing.
.PHONY: deps
deps:
	@$(TOP)/scripts/deps.sh
