//! TODO(filled by the ABI work): `elfnote`.
