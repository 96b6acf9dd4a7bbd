//! TODO(filled by the ABI work): `callback`.
