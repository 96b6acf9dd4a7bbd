//! The xenstore side of a vbd backend as pure functions: what the backend publishes when it
//! announces itself and when it connects (`public/io/blkif.h`), and the strict parsing of
//! what the frontend publishes (its `ring-ref`, `event-channel`, `protocol`), which is guest
//! data like any other.

use super::DiskInfo;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::{vdisk, XEN_IO_PROTO_ABI_X86_64};
use hypercall_abi::{GrantRef, Port};

/// `virtual-device` of the first Xen disk (`xvda`: major 202, minor 0).
pub const XVDA: u32 = 51712;

/// Keys written at InitWait: the features the frontend reads before it sets its side up.
pub fn announce_keys(info: &DiskInfo) -> Vec<(&'static str, String)> {
    alloc::vec![
        ("feature-flush-cache", String::from(if info.flush { "1" } else { "0" })),
        ("feature-barrier", String::from("0")),
        ("feature-discard", String::from("0")),
        ("feature-persistent", String::from("1")),
        ("max-ring-page-order", String::from("0")),
    ]
}

/// Keys written when connecting: the disk's geometry and mode.
pub fn connect_keys(info: &DiskInfo) -> Vec<(&'static str, String)> {
    alloc::vec![
        ("sectors", format!("{}", info.capacity)),
        ("sector-size", String::from("512")),
        ("physical-sector-size", String::from("512")),
        ("info", format!("{}", if info.readonly { vdisk::READONLY } else { 0 })),
        ("mode", String::from(if info.readonly { "r" } else { "w" })),
    ]
}

/// Why a frontend's ring description was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendError {
    /// `ring-ref` missing or not a decimal number that fits.
    BadRingRef,
    /// `event-channel` missing or not a valid port number.
    BadEventChannel,
    /// A `protocol` other than the native x86_64 one.
    UnsupportedProtocol,
    /// Multi-page rings (`ring-page-order` > 0) are not offered.
    MultiPageRing,
}

impl FrontendError {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendError::BadRingRef => "bad ring-ref",
            FrontendError::BadEventChannel => "bad event-channel",
            FrontendError::UnsupportedProtocol => "unsupported protocol",
            FrontendError::MultiPageRing => "multi-page ring not supported",
        }
    }
}

/// A decimal number without sign, spaces or anything else (xenstore values are not trusted
/// to be tidy), optionally NUL-terminated.
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.strip_suffix(b"\0").unwrap_or(v);
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(v).ok()?.parse().ok()
}

/// What a connecting frontend published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendRing {
    pub ring_ref: GrantRef,
    pub port: Port,
}

/// Checks the frontend's nodes (`None` = node absent). Only single-page rings and the native
/// protocol are accepted.
pub fn parse_frontend(
    ring_ref: Option<&[u8]>,
    event_channel: Option<&[u8]>,
    protocol: Option<&[u8]>,
    ring_page_order: Option<&[u8]>,
) -> Result<FrontendRing, FrontendError> {
    if let Some(order) = ring_page_order {
        if parse_decimal(order) != Some(0) {
            return Err(FrontendError::MultiPageRing);
        }
    }
    let ring_ref = ring_ref
        .and_then(parse_decimal)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(FrontendError::BadRingRef)?;
    let port = event_channel
        .and_then(parse_decimal)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&p| p != 0 && p < hypercall_abi::event_channel::EVTCHN_2L_NR_CHANNELS)
        .ok_or(FrontendError::BadEventChannel)?;
    if let Some(p) = protocol {
        let p = p.strip_suffix(b"\0").unwrap_or(p);
        if p != XEN_IO_PROTO_ABI_X86_64.as_bytes() {
            return Err(FrontendError::UnsupportedProtocol);
        }
    }
    Ok(FrontendRing { ring_ref: GrantRef(ring_ref), port: Port(port) })
}

/// dom0's `vbd=` option: a comma-separated list of domain names or ids, the n-th getting the
/// n-th disk.
pub fn parse_vbd_option(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_follow_the_disk() {
        let rw = DiskInfo { capacity: 131072, readonly: false, flush: true };
        let k = connect_keys(&rw);
        assert!(k.contains(&("sectors", String::from("131072"))));
        assert!(k.contains(&("info", String::from("0"))) && k.contains(&("mode", String::from("w"))));
        assert!(announce_keys(&rw).contains(&("feature-flush-cache", String::from("1"))));
        let ro = DiskInfo { capacity: 8, readonly: true, flush: false };
        assert!(connect_keys(&ro).contains(&("info", String::from("4"))));
        assert!(connect_keys(&ro).contains(&("mode", String::from("r"))));
        assert!(announce_keys(&ro).contains(&("feature-flush-cache", String::from("0"))));
    }

    #[test]
    fn frontend_nodes_are_parsed_strictly() {
        let ok = parse_frontend(Some(b"8"), Some(b"5"), Some(b"x86_64-abi"), None);
        assert_eq!(ok, Ok(FrontendRing { ring_ref: GrantRef(8), port: Port(5) }));
        assert!(parse_frontend(Some(b"8\0"), Some(b"5"), None, Some(b"0")).is_ok());
        for bad in [&b""[..], b"-1", b" 8", b"8 ", b"0x8", b"4294967296", b"99999999999999999999999"] {
            assert_eq!(
                parse_frontend(Some(bad), Some(b"5"), None, None),
                Err(FrontendError::BadRingRef),
                "{bad:?}"
            );
        }
        assert_eq!(parse_frontend(None, Some(b"5"), None, None), Err(FrontendError::BadRingRef));
        for bad in [&b"0"[..], b"4096", b"", b"1e3"] {
            assert_eq!(
                parse_frontend(Some(b"8"), Some(bad), None, None),
                Err(FrontendError::BadEventChannel)
            );
        }
        assert_eq!(
            parse_frontend(Some(b"8"), Some(b"5"), Some(b"x86_32-abi"), None),
            Err(FrontendError::UnsupportedProtocol)
        );
        assert_eq!(
            parse_frontend(Some(b"8"), Some(b"5"), None, Some(b"2")),
            Err(FrontendError::MultiPageRing)
        );
    }

    #[test]
    fn vbd_option() {
        assert_eq!(parse_vbd_option("domU, 3,,x"), ["domU", "3", "x"]);
        assert!(parse_vbd_option("").is_empty());
    }

    proptest! {
        #[test]
        fn decimal_parsing_round_trips_and_rejects_junk(v: u64, junk in proptest::collection::vec(any::<u8>(), 0..24)) {
            prop_assert_eq!(parse_decimal(format!("{v}").as_bytes()), Some(v));
            if let Some(n) = parse_decimal(&junk) {
                let s = core::str::from_utf8(junk.strip_suffix(b"\0").unwrap_or(&junk)).unwrap();
                prop_assert_eq!(s.parse::<u64>().ok(), Some(n));
                prop_assert!(s.bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }
}
