//! TODO(filled by the ABI work): `event_channel`.
