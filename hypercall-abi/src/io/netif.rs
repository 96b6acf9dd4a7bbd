//! The PV network protocol (`public/io/netif.h`): a transmit ring (frontend sends packets as
//! granted fragments) and a receive ring (frontend posts granted buffers the backend fills),
//! 256 slots each, sharing one event channel (unless split event channels are negotiated).
//!
//! Xenstore: the device class is `vif`; the toolstack writes `mac` (and `handle`) in both
//! directories; the backend advertises what it offers with the [`keys`] `feature-*` nodes
//! before InitWait, the frontend publishes `tx-ring-ref`, `rx-ring-ref`, `event-channel` and
//! what it asks for (`request-rx-copy`, `feature-rx-notify`, `feature-sg`, ...).

use super::ring::{ring_size, slot_size, BackRing, FrontRing};
use crate::types::GrantRef;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device class in xenstore paths.
pub const KIND: &str = "vif";

/// The keys of the two rings' grant references, in the order a backend maps them.
pub const RINGS: [&str; 2] = ["tx-ring-ref", "rx-ring-ref"];

/// Xenstore keys of the feature negotiation (`netif.h`'s "Feature and Parameter
/// Negotiation"), as Linux's netfront and netback read and write them.
pub mod keys {
    // Written by the backend (what it offers).
    /// Receive by grant copy (the only receive mode left; Linux's netfront requires it).
    pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
    /// Receive by page flipping (obsolete; `0`).
    pub const FEATURE_RX_FLIP: &str = "feature-rx-flip";
    /// Packets of more than one slot, both ways.
    pub const FEATURE_SG: &str = "feature-sg";
    pub const FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
    pub const FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
    /// Checksum offload for IPv6 (IPv4's is always on).
    pub const FEATURE_IPV6_CSUM_OFFLOAD: &str = "feature-ipv6-csum-offload";
    pub const FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    pub const FEATURE_MULTICAST_CONTROL: &str = "feature-multicast-control";
    // Written by the frontend (what it asks for).
    pub const REQUEST_RX_COPY: &str = "request-rx-copy";
    /// It notifies when it posts receive buffers (Linux's netback requires it).
    pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
    /// It cannot take packets whose checksum is blank.
    pub const FEATURE_NO_CSUM_OFFLOAD: &str = "feature-no-csum-offload";
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    // Written by the toolstack.
    pub const MAC: &str = "mac";
    pub const HANDLE: &str = "handle";
}

/// Parses a `mac` node (`00:16:3e:01:02:03`: six two-digit hex bytes, either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let s = s.trim_end_matches('\0');
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A MAC displayed as the toolstack writes it (lower-case hex, colons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacDisplay(pub [u8; 6]);

impl core::fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// `NETTXF_*`: [`NetifTxRequest::flags`].
pub mod nettxf {
    /// The protocol checksum field is blank (checksum offload).
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// The packet's checksum has been validated.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// More fragments of this packet follow.
    pub const MORE_DATA: u16 = 1 << 2;
    /// A [`super::NetifExtraInfo`] occupies the next slot.
    pub const EXTRA_INFO: u16 = 1 << 3;
}

/// `NETRXF_*`: [`NetifRxResponse::flags`].
pub mod netrxf {
    pub const DATA_VALIDATED: u16 = 1 << 0;
    pub const CSUM_BLANK: u16 = 1 << 1;
    pub const MORE_DATA: u16 = 1 << 2;
    pub const EXTRA_INFO: u16 = 1 << 3;
    pub const GSO_PREFIX: u16 = 1 << 4;
}

/// `NETIF_RSP_*`: response status codes (rx responses carry a byte count when positive).
pub mod netif_rsp {
    pub const DROPPED: i16 = -2;
    pub const ERROR: i16 = -1;
    pub const OKAY: i16 = 0;
    /// Response slot for an extra-info request.
    pub const NULL: i16 = 1;
}

/// `XEN_NETIF_EXTRA_TYPE_*`: [`NetifExtraInfo::type_`].
pub mod extra_type {
    pub const NONE: u8 = 0;
    pub const GSO: u8 = 1;
    pub const MCAST_ADD: u8 = 2;
    pub const MCAST_DEL: u8 = 3;
    pub const HASH: u8 = 4;
    pub const MAX: u8 = 5;
}

/// `XEN_NETIF_EXTRA_FLAG_*`.
pub mod extra_flag {
    /// Another extra-info slot follows.
    pub const MORE: u8 = 1 << 0;
}

/// `XEN_NETIF_GSO_TYPE_*`.
pub mod gso_type {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const TCPV6: u8 = 2;
}

/// Slots a backend must accept for one packet (`XEN_NETIF_NR_SLOTS_MIN`).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// Largest packet the first tx slot's `size` can describe.
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xFFFF;

/// `struct netif_tx_request`: one fragment of a packet to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetifTxRequest {
    pub gref: GrantRef,
    /// Offset of the data in the granted page.
    pub offset: u16,
    /// [`nettxf`] bits.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First fragment: the whole packet's size; others: this fragment's.
    pub size: u16,
}
assert_layout!(NetifTxRequest, size = 12, gref = 0, offset = 4, flags = 6, id = 8, size = 10);

impl NetifTxRequest {
    /// True if `offset + size` stays within the page (a backend must check before copying;
    /// only meaningful for fragment sizes, not a first slot's total).
    pub const fn within_page(&self) -> bool {
        self.offset as usize + self.size as usize <= crate::PAGE_SIZE
    }

    /// The slot read as extra info (when the previous slot had [`nettxf::EXTRA_INFO`]).
    pub fn as_extra_info(&self) -> NetifExtraInfo {
        // A 12-byte slot always holds the 8-byte extra info at its start.
        NetifExtraInfo::read_from_prefix(self.as_bytes()).map(|(e, _)| e).unwrap_or_default()
    }

    /// A tx slot carrying `e`.
    pub fn from_extra_info(e: &NetifExtraInfo) -> NetifTxRequest {
        let mut r = NetifTxRequest::default();
        r.as_mut_bytes()[..8].copy_from_slice(e.as_bytes());
        r
    }
}

/// `struct netif_tx_response`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetifTxResponse {
    pub id: u16,
    /// [`netif_rsp`].
    pub status: i16,
}
assert_layout!(NetifTxResponse, size = 4, id = 0, status = 2);

/// `struct netif_rx_request`: a granted buffer for the backend to fill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetifRxRequest {
    pub id: u16,
    pub _pad: u16,
    pub gref: GrantRef,
}
assert_layout!(NetifRxRequest, size = 8, id = 0, gref = 4);

/// `struct netif_rx_response`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetifRxResponse {
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// [`netrxf`] bits.
    pub flags: u16,
    /// Bytes received if positive, else a [`netif_rsp`] code.
    pub status: i16,
}
assert_layout!(NetifRxResponse, size = 8, id = 0, offset = 2, flags = 4, status = 6);

/// `struct netif_extra_info`: `type`, `flags` and the 6-byte union (GSO, multicast address or
/// hash), kept raw; use the accessors for the GSO and multicast forms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetifExtraInfo {
    /// [`extra_type`] (Xen's field is `type`).
    pub type_: u8,
    /// [`extra_flag`] bits.
    pub flags: u8,
    pub u: [u8; 6],
}
assert_layout!(NetifExtraInfo, size = 8, type_ = 0, flags = 1, u = 2);

impl NetifExtraInfo {
    /// `u.gso`: `(size, type, features)`.
    pub fn gso(&self) -> (u16, u8, u16) {
        (u16::from_le_bytes([self.u[0], self.u[1]]), self.u[2], u16::from_le_bytes([self.u[4], self.u[5]]))
    }
    /// An extra-info entry of type GSO.
    pub fn new_gso(size: u16, gso_type: u8, features: u16, flags: u8) -> Self {
        let [s0, s1] = size.to_le_bytes();
        let [f0, f1] = features.to_le_bytes();
        NetifExtraInfo { type_: extra_type::GSO, flags, u: [s0, s1, gso_type, 0, f0, f1] }
    }
    /// `u.mcast.addr`.
    pub fn mcast_addr(&self) -> [u8; 6] {
        self.u
    }
}

/// `NET_TX_RING_SIZE` for one page.
pub const NET_TX_RING_SIZE: u32 = ring_size(slot_size::<NetifTxRequest, NetifTxResponse>());
/// `NET_RX_RING_SIZE` for one page.
pub const NET_RX_RING_SIZE: u32 = ring_size(slot_size::<NetifRxRequest, NetifRxResponse>());
const _: () = assert!(NET_TX_RING_SIZE == 256 && NET_RX_RING_SIZE == 256);

/// `netif_tx_front_ring_t`.
pub type NetifTxFrontRing = FrontRing<NetifTxRequest, NetifTxResponse>;
/// `netif_tx_back_ring_t`.
pub type NetifTxBackRing = BackRing<NetifTxRequest, NetifTxResponse>;
/// `netif_rx_front_ring_t`.
pub type NetifRxFrontRing = FrontRing<NetifRxRequest, NetifRxResponse>;
/// `netif_rx_back_ring_t`.
pub type NetifRxBackRing = BackRing<NetifRxRequest, NetifRxResponse>;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn extra_info_in_a_tx_slot() {
        let e = NetifExtraInfo::new_gso(1448, gso_type::TCPV4, 0, extra_flag::MORE);
        let slot = NetifTxRequest::from_extra_info(&e);
        assert_eq!(slot.as_extra_info(), e);
        assert_eq!(slot.as_extra_info().gso(), (1448, gso_type::TCPV4, 0));
        assert_eq!(e.as_bytes(), &[1, 1, 0xa8, 0x05, 1, 0, 0, 0]);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("00:16:3e:0A:ff:01"), Some([0, 0x16, 0x3e, 0x0a, 0xff, 1]));
        assert_eq!(parse_mac("00:16:3e:0a:ff:01\0"), Some([0, 0x16, 0x3e, 0x0a, 0xff, 1]));
        for bad in [
            "",
            "00:16:3e:0a:ff",
            "00:16:3e:0a:ff:01:02",
            "0:16:3e:0a:ff:01",
            "00:16:3e:0a:ff:0g",
            "00-16-3e-0a-ff-01",
            "+0:16:3e:0a:ff:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let m = [0, 0x16, 0x3e, 0x12, 0x34, 7];
        let text = std::format!("{}", MacDisplay(m));
        assert_eq!(text, "00:16:3e:12:34:07");
        assert_eq!(parse_mac(&text), Some(m));
    }

    #[test]
    fn fragment_bounds() {
        assert!(NetifTxRequest { offset: 4000, size: 96, ..Default::default() }.within_page());
        assert!(!NetifTxRequest { offset: 4000, size: 97, ..Default::default() }.within_page());
        assert!(!NetifTxRequest { offset: u16::MAX, size: u16::MAX, ..Default::default() }.within_page());
    }
}
