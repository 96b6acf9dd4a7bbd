//! TODO(filled by the ABI work): `version`.
