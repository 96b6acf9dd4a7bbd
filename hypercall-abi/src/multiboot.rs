//! TODO(filled by the ABI work): `multiboot`.
