//! TODO(filled by the ABI work): `vcpu`.
