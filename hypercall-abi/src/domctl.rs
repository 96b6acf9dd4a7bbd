//! TODO(filled by the ABI work): `domctl`.
