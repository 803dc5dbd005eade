//! Host side and safe API of the in-process Linux kernel library.
