//! TODO(filled by the ABI work): `sched`.
