//! The Xen version microvisor reports: the interface it implements (Xen 4.19's public headers,
//! interface version 0x00041300), so guests pick the matching ABI.

/// Major version reported by `XENVER_version`.
pub const XEN_MAJOR: u32 = 4;
/// Minor version reported by `XENVER_version`.
pub const XEN_MINOR: u32 = 19;
/// `XENVER_version`'s value: `major << 16 | minor`.
pub const XEN_VERSION: u32 = (XEN_MAJOR << 16) | XEN_MINOR;
/// `XENVER_extraversion`.
pub const EXTRAVERSION: &str = "-microvisor";
/// `XENVER_capabilities`: the only guest type supported.
pub const CAPABILITIES: &str = "xen-3.0-x86_64";
