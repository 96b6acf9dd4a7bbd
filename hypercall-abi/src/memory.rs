//! TODO(filled by the ABI work): `memory`.
