//! `xen_version` (`public/version.h`): version numbers, build strings and the feature bitmap a
//! guest reads before relying on optional behaviour.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `XENVER_*` sub-operations of `xen_version`.
pub mod op {
    /// Returns `major << 16 | minor` (see [`super::encode_version`]).
    pub const VERSION: u32 = 0;
    pub const EXTRAVERSION: u32 = 1;
    pub const COMPILE_INFO: u32 = 2;
    pub const CAPABILITIES: u32 = 3;
    pub const CHANGESET: u32 = 4;
    pub const PLATFORM_PARAMETERS: u32 = 5;
    pub const GET_FEATURES: u32 = 6;
    /// Returns the page size.
    pub const PAGESIZE: u32 = 7;
    /// Fills a 16-byte `xen_domain_handle_t`.
    pub const GUEST_HANDLE: u32 = 8;
    pub const COMMANDLINE: u32 = 9;
    pub const BUILD_ID: u32 = 10;
}

/// The value `XENVER_version` returns.
pub const fn encode_version(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// Splits a `XENVER_version` result into `(major, minor)`.
pub const fn decode_version(v: u32) -> (u16, u16) {
    ((v >> 16) as u16, v as u16)
}

/// `struct xen_feature_info`: one 32-bit word of the `XENFEAT_*` bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// IN: which word ([`crate::elfnote::feature::NR_SUBMAPS`] exist).
    pub submap_idx: u32,
    /// OUT: bit `i` = feature `submap_idx * 32 + i`.
    pub submap: u32,
}
assert_layout!(XenFeatureInfo, size = 8, submap_idx = 0, submap = 4);

/// `struct xen_platform_parameters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenPlatformParameters {
    /// Lowest virtual address the hypervisor reserves.
    pub virt_start: u64,
}
assert_layout!(XenPlatformParameters, size = 8, virt_start = 0);

/// Defines a NUL-padded C string buffer as Xen's `char name[N]` typedefs are.
macro_rules! c_string_buffer {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[repr(transparent)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the buffer, NUL included.
            pub const LEN: usize = $len;

            /// A buffer holding `s`, truncated so a terminating NUL always fits.
            pub fn new(s: &str) -> Self {
                let mut b = Self::new_zeroed();
                let n = s.len().min($len - 1);
                b.0[..n].copy_from_slice(&s.as_bytes()[..n]);
                b
            }

            /// The bytes before the first NUL (all of them if there is none).
            pub fn as_bytes_until_nul(&self) -> &[u8] {
                let n = self.0.iter().position(|&c| c == 0).unwrap_or($len);
                &self.0[..n]
            }

            /// The string before the first NUL, if it is UTF-8.
            pub fn to_str(&self) -> Option<&str> {
                core::str::from_utf8(self.as_bytes_until_nul()).ok()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new_zeroed()
            }
        }
    };
}

c_string_buffer!(
    /// `xen_extraversion_t`: the version suffix, e.g. "-microvisor".
    XenExtraversion,
    16
);
assert_layout!(XenExtraversion, size = 16);

c_string_buffer!(
    /// `xen_capabilities_info_t`: space-separated ABIs, e.g. "xen-3.0-x86_64".
    XenCapabilitiesInfo,
    1024
);
assert_layout!(XenCapabilitiesInfo, size = 1024);

c_string_buffer!(
    /// `xen_changeset_info_t`: the source revision.
    XenChangesetInfo,
    64
);
assert_layout!(XenChangesetInfo, size = 64);

c_string_buffer!(
    /// `xen_commandline_t`: the hypervisor's command line (privileged callers only).
    XenCommandline,
    1024
);
assert_layout!(XenCommandline, size = 1024);

/// `struct xen_compile_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenCompileInfo {
    pub compiler: CompileInfoCompiler,
    pub compile_by: CompileInfoBy,
    pub compile_domain: CompileInfoDomain,
    pub compile_date: CompileInfoDate,
}
assert_layout!(
    XenCompileInfo,
    size = 144,
    compiler = 0,
    compile_by = 64,
    compile_domain = 80,
    compile_date = 112
);

c_string_buffer!(
    /// `xen_compile_info.compiler`.
    CompileInfoCompiler,
    64
);
c_string_buffer!(
    /// `xen_compile_info.compile_by`.
    CompileInfoBy,
    16
);
c_string_buffer!(
    /// `xen_compile_info.compile_domain`.
    CompileInfoDomain,
    32
);
c_string_buffer!(
    /// `xen_compile_info.compile_date`.
    CompileInfoDate,
    32
);

/// Header of `struct xen_build_id` (`XENVER_build_id`): `len` bytes of `buf` follow it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenBuildIdHeader {
    /// IN: size of the buffer after the header; OUT: size of the build id.
    pub len: u32,
}
assert_layout!(XenBuildIdHeader, size = 4, len = 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trip() {
        assert_eq!(encode_version(4, 19), 0x0004_0013);
        assert_eq!(decode_version(encode_version(4, 19)), (4, 19));
    }

    #[test]
    fn c_strings_truncate_and_terminate() {
        let e = XenExtraversion::new(".0-microvisor-too-long");
        assert_eq!(e.0[15], 0);
        assert_eq!(e.to_str(), Some(".0-microvisor-t"));
        let c = XenCapabilitiesInfo::new("xen-3.0-x86_64");
        assert_eq!(c.to_str(), Some("xen-3.0-x86_64"));
        // A buffer without a NUL (written by a hostile party) is read to its end, no further.
        let full = XenChangesetInfo([b'a'; 64]);
        assert_eq!(full.as_bytes_until_nul().len(), 64);
        assert_eq!(XenCompileInfo::default().compiler.to_str(), Some(""));
    }
}
