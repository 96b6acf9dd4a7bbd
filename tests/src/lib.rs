//! Shared helpers for the QEMU boot tests in `tests/tests/`.
