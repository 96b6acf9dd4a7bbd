//! TODO(filled by the ABI work): `grant_table`.
