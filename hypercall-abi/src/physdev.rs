//! TODO(filled by the ABI work): `physdev`.
