//! The xenstore wire protocol (`public/io/xs_wire.h`): message header and types, the error
//! names sent back as strings, and the shared ring page between a domain and xenstored.
//!
//! The encode/decode helpers work on caller-supplied byte buffers (no allocation) and check
//! every length against [`XENSTORE_PAYLOAD_MAX`] before trusting it.

use crate::errno::Errno;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Bytes of each of the `req` and `rsp` rings.
pub const XENSTORE_RING_SIZE: u32 = 1024;
/// Largest payload of one message. Violating it breaks the connection (xenstore.txt).
pub const XENSTORE_PAYLOAD_MAX: u32 = 4096;
/// Longest absolute path (longer ones get an error).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// The special watch paths (xenstore.txt): fired when a domain is introduced, and when one
/// is released (or shuts down). Since XSA-115 only dom0 and domains granted read on the
/// special node hear them.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// `server_features` bits.
pub mod server_feature {
    /// The ring can be reset through `connection`.
    pub const RECONNECTION: u32 = 1;
    /// The `error` field is maintained.
    pub const ERROR: u32 = 2;
}

/// `connection` values.
pub mod connection {
    /// The steady state.
    pub const XENSTORE_CONNECTED: u32 = 0;
    /// The guest asked for a reconnect; the server resets the ring and writes CONNECTED.
    pub const XENSTORE_RECONNECT: u32 = 1;
}

/// `error` values.
pub mod ring_error {
    pub const XENSTORE_ERROR_NONE: u32 = 0;
    /// Communication problem.
    pub const XENSTORE_ERROR_COMM: u32 = 1;
    /// Invalid ring index.
    pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
    /// Protocol violation (payload too long).
    pub const XENSTORE_ERROR_PROTO: u32 = 3;
}

/// `XS_WATCH_*`: field indexes of a WATCH_EVENT payload.
pub mod watch_field {
    pub const PATH: usize = 0;
    pub const TOKEN: usize = 1;
}

/// `XS_WRITE_*` mode strings of the ancient write-with-flags form.
pub const XS_WRITE_NONE: &str = "NONE";
pub const XS_WRITE_CREATE: &str = "CREATE";
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// `enum xsd_sockmsg_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL`, formerly `XS_DEBUG`.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, removed.
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
}

/// `XS_INVALID`: guaranteed never to be a valid type.
pub const XS_INVALID: u32 = 0xffff;
/// `XS_TYPE_COUNT`: one past the highest type.
pub const XS_TYPE_COUNT: u32 = 27;

impl XsdSockmsgType {
    /// Every type, in numeric order.
    pub const ALL: [XsdSockmsgType; 26] = [
        Self::Control,
        Self::Directory,
        Self::Read,
        Self::GetPerms,
        Self::Watch,
        Self::Unwatch,
        Self::TransactionStart,
        Self::TransactionEnd,
        Self::Introduce,
        Self::Release,
        Self::GetDomainPath,
        Self::Write,
        Self::Mkdir,
        Self::Rm,
        Self::SetPerms,
        Self::WatchEvent,
        Self::Error,
        Self::IsDomainIntroduced,
        Self::Resume,
        Self::SetTarget,
        Self::ResetWatches,
        Self::DirectoryPart,
        Self::GetFeature,
        Self::SetFeature,
        Self::GetQuota,
        Self::SetQuota,
    ];

    /// The type with wire number `v`, if there is one.
    pub const fn from_u32(v: u32) -> Option<XsdSockmsgType> {
        match v {
            0..=19 | 21..=26 => {
                let i = if v < 20 { v } else { v - 1 } as usize;
                Some(Self::ALL[i])
            }
            _ => None,
        }
    }

    /// The wire number.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// Xen's name without the prefix ("READ", "WATCH_EVENT").
    pub const fn name(self) -> &'static str {
        match self {
            Self::Control => "CONTROL",
            Self::Directory => "DIRECTORY",
            Self::Read => "READ",
            Self::GetPerms => "GET_PERMS",
            Self::Watch => "WATCH",
            Self::Unwatch => "UNWATCH",
            Self::TransactionStart => "TRANSACTION_START",
            Self::TransactionEnd => "TRANSACTION_END",
            Self::Introduce => "INTRODUCE",
            Self::Release => "RELEASE",
            Self::GetDomainPath => "GET_DOMAIN_PATH",
            Self::Write => "WRITE",
            Self::Mkdir => "MKDIR",
            Self::Rm => "RM",
            Self::SetPerms => "SET_PERMS",
            Self::WatchEvent => "WATCH_EVENT",
            Self::Error => "ERROR",
            Self::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            Self::Resume => "RESUME",
            Self::SetTarget => "SET_TARGET",
            Self::ResetWatches => "RESET_WATCHES",
            Self::DirectoryPart => "DIRECTORY_PART",
            Self::GetFeature => "GET_FEATURE",
            Self::SetFeature => "SET_FEATURE",
            Self::GetQuota => "GET_QUOTA",
            Self::SetQuota => "SET_QUOTA",
        }
    }
}

/// `xsd_errors[]`: the errors xenstored reports, by the name it sends in an ERROR reply.
/// New entries are only ever appended.
pub const XSD_ERRORS: [(Errno, &str); 16] = [
    (Errno::EINVAL, "EINVAL"),
    (Errno::EACCES, "EACCES"),
    (Errno::EEXIST, "EEXIST"),
    (Errno::EISDIR, "EISDIR"),
    (Errno::ENOENT, "ENOENT"),
    (Errno::ENOMEM, "ENOMEM"),
    (Errno::ENOSPC, "ENOSPC"),
    (Errno::EIO, "EIO"),
    (Errno::ENOTEMPTY, "ENOTEMPTY"),
    (Errno::ENOSYS, "ENOSYS"),
    (Errno::EROFS, "EROFS"),
    (Errno::EBUSY, "EBUSY"),
    (Errno::EAGAIN, "EAGAIN"),
    (Errno::EISCONN, "EISCONN"),
    (Errno::E2BIG, "E2BIG"),
    (Errno::EPERM, "EPERM"),
];

/// The string an ERROR reply carries for `e`. Errors outside [`XSD_ERRORS`] are sent as
/// "EINVAL", as xenstored does.
pub fn error_name(e: Errno) -> &'static str {
    XSD_ERRORS.iter().find(|(n, _)| *n == e).map_or("EINVAL", |&(_, s)| s)
}

/// The error an ERROR reply's payload names (with or without its trailing NUL).
pub fn error_from_payload(payload: &[u8]) -> Option<Errno> {
    let name = payload.strip_suffix(&[0]).unwrap_or(payload);
    XSD_ERRORS.iter().find(|(_, s)| s.as_bytes() == name).map(|&(e, _)| e)
}

/// `struct xsd_sockmsg`: the header in front of every message; `len` payload bytes follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XsdSockmsg {
    /// [`XsdSockmsgType`] number (Xen's field is `type`). Kept raw: a peer may send anything.
    pub type_: u32,
    /// Echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}
assert_layout!(XsdSockmsg, size = 16, type_ = 0, req_id = 4, tx_id = 8, len = 12);

/// Bytes of an encoded header.
pub const XSD_SOCKMSG_SIZE: usize = core::mem::size_of::<XsdSockmsg>();

impl XsdSockmsg {
    /// The message type, if known.
    pub const fn msg_type(&self) -> Option<XsdSockmsgType> {
        XsdSockmsgType::from_u32(self.type_)
    }
}

/// Writes a header and the concatenation of `parts` as the payload into `buf`; returns the
/// bytes used. `E2BIG` if the payload exceeds [`XENSTORE_PAYLOAD_MAX`], `ENOSPC` if `buf` is
/// too small (nothing useful is written then).
pub fn encode_message(
    buf: &mut [u8],
    ty: XsdSockmsgType,
    req_id: u32,
    tx_id: u32,
    parts: &[&[u8]],
) -> Result<usize, Errno> {
    let mut len = 0usize;
    for p in parts {
        len = len.checked_add(p.len()).ok_or(Errno::E2BIG)?;
    }
    if len > XENSTORE_PAYLOAD_MAX as usize {
        return Err(Errno::E2BIG);
    }
    let total = XSD_SOCKMSG_SIZE + len;
    if buf.len() < total {
        return Err(Errno::ENOSPC);
    }
    let hdr = XsdSockmsg { type_: ty.as_u32(), req_id, tx_id, len: len as u32 };
    buf[..XSD_SOCKMSG_SIZE].copy_from_slice(hdr.as_bytes());
    let mut at = XSD_SOCKMSG_SIZE;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    Ok(total)
}

/// Reads a header from the start of `buf`. `Ok(None)`: fewer than 16 bytes so far. `E2BIG`:
/// the announced payload exceeds [`XENSTORE_PAYLOAD_MAX`] (a protocol violation; the
/// connection cannot be resynchronised).
pub fn decode_header(buf: &[u8]) -> Result<Option<XsdSockmsg>, Errno> {
    let Ok((hdr, _)) = XsdSockmsg::read_from_prefix(buf) else {
        return Ok(None);
    };
    if hdr.len > XENSTORE_PAYLOAD_MAX {
        return Err(Errno::E2BIG);
    }
    Ok(Some(hdr))
}

/// A complete message found in a buffer by [`decode_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsMessage<'a> {
    pub hdr: XsdSockmsg,
    /// `hdr.len` bytes.
    pub payload: &'a [u8],
    /// Bytes of the buffer the message occupies (header and payload).
    pub used: usize,
}

/// Reads a whole message from the start of `buf`. `Ok(None)` until all of it is there.
pub fn decode_message(buf: &[u8]) -> Result<Option<XsMessage<'_>>, Errno> {
    let Some(hdr) = decode_header(buf)? else {
        return Ok(None);
    };
    let used = XSD_SOCKMSG_SIZE + hdr.len as usize;
    Ok(buf.get(XSD_SOCKMSG_SIZE..used).map(|payload| XsMessage { hdr, payload, used }))
}

/// The NUL-terminated fields of a payload ("path\0token\0" gives "path", "token"). A last field
/// without a NUL (WRITE's value) is returned too.
pub fn nul_fields(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    let empty = payload.is_empty();
    body.split(|&b| b == 0).filter(move |_| !empty)
}

/// `struct xenstore_domain_interface`: the xenstore ring page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to xenstored.
    pub req: [u8; XENSTORE_RING_SIZE as usize],
    /// Replies and watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE as usize],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    /// [`server_feature`] bits.
    pub server_features: u32,
    /// [`connection`] value.
    pub connection: u32,
    /// [`ring_error`] value.
    pub error: u32,
    /// Event channel port of the ring, as the server sees it (newer Xen).
    pub evtchn_port: u32,
}
assert_layout!(
    XenstoreDomainInterface,
    size = 2080,
    req = 0,
    rsp = 1024,
    req_cons = 2048,
    req_prod = 2052,
    rsp_cons = 2056,
    rsp_prod = 2060,
    server_features = 2064,
    connection = 2068,
    error = 2072,
    evtchn_port = 2076
);

impl Default for XenstoreDomainInterface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// `MASK_XENSTORE_IDX(idx)`.
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    super::byte_ring::mask(idx, XENSTORE_RING_SIZE)
}

/// Byte offset of `req`.
pub const REQ_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, req);
/// Byte offset of `rsp`.
pub const RSP_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp);
/// Byte offset of `req_cons`.
pub const REQ_CONS_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, req_cons);
/// Byte offset of `req_prod`.
pub const REQ_PROD_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, req_prod);
/// Byte offset of `rsp_cons`.
pub const RSP_CONS_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_cons);
/// Byte offset of `rsp_prod`.
pub const RSP_PROD_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_prod);
/// Byte offset of `server_features`.
pub const SERVER_FEATURES_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, server_features);
/// Byte offset of `connection`.
pub const CONNECTION_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, connection);
/// Byte offset of `error`.
pub const ERROR_OFFSET: usize = core::mem::offset_of!(XenstoreDomainInterface, error);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn type_numbers() {
        assert_eq!(XsdSockmsgType::Read.as_u32(), 2);
        assert_eq!(XsdSockmsgType::Write.as_u32(), 11);
        assert_eq!(XsdSockmsgType::WatchEvent.as_u32(), 15);
        assert_eq!(XsdSockmsgType::ResetWatches.as_u32(), 21);
        assert_eq!(XsdSockmsgType::DirectoryPart.as_u32(), 22);
        assert_eq!(XsdSockmsgType::from_u32(20), None);
        assert_eq!(XsdSockmsgType::from_u32(XS_TYPE_COUNT), None);
        assert_eq!(XsdSockmsgType::from_u32(XS_INVALID), None);
        for (i, t) in XsdSockmsgType::ALL.iter().enumerate() {
            assert_eq!(XsdSockmsgType::from_u32(t.as_u32()), Some(*t));
            if i > 0 {
                assert!(XsdSockmsgType::ALL[i - 1].as_u32() < t.as_u32());
            }
        }
        assert_eq!(XsdSockmsgType::GetDomainPath.name(), "GET_DOMAIN_PATH");
    }

    #[test]
    fn errors_by_name() {
        assert_eq!(error_name(Errno::ENOENT), "ENOENT");
        assert_eq!(error_name(Errno::ETIMEDOUT), "EINVAL");
        assert_eq!(error_from_payload(b"EACCES\0"), Some(Errno::EACCES));
        assert_eq!(error_from_payload(b"EPERM"), Some(Errno::EPERM));
        assert_eq!(error_from_payload(b"EWHAT\0"), None);
        for (e, s) in XSD_ERRORS {
            assert_eq!(e.name(), s, "table agrees with errno.rs");
        }
    }

    #[test]
    fn encode_decode() {
        let mut buf = [0u8; 64];
        let n =
            encode_message(&mut buf, XsdSockmsgType::Write, 7, 0, &[b"device/vbd/0/state\0", b"4"]).unwrap();
        assert_eq!(n, 16 + 20);
        let XsMessage { hdr, payload, used } = decode_message(&buf[..n]).unwrap().unwrap();
        assert_eq!((hdr.msg_type(), hdr.req_id, hdr.tx_id, hdr.len), (Some(XsdSockmsgType::Write), 7, 0, 20));
        assert_eq!(used, n);
        let fields: Vec<_> = nul_fields(payload).collect();
        assert_eq!(fields, [&b"device/vbd/0/state"[..], b"4"]);
        // Incomplete messages wait for more bytes.
        assert_eq!(decode_message(&buf[..n - 1]), Ok(None));
        assert_eq!(decode_header(&buf[..15]), Ok(None));
        // Buffers and payloads that do not fit.
        assert_eq!(
            encode_message(&mut buf[..20], XsdSockmsgType::Read, 1, 0, &[b"abcde"]),
            Err(Errno::ENOSPC)
        );
        let big = [b'x'; 4097];
        let mut large = [0u8; 5000];
        assert_eq!(encode_message(&mut large, XsdSockmsgType::Write, 1, 0, &[&big]), Err(Errno::E2BIG));
        assert_eq!(encode_message(&mut large, XsdSockmsgType::Write, 1, 0, &[&big[..4096]]), Ok(4112));
    }

    #[test]
    fn hostile_length_is_refused() {
        let hdr = XsdSockmsg { type_: 2, req_id: 0, tx_id: 0, len: u32::MAX };
        assert_eq!(decode_header(hdr.as_bytes()), Err(Errno::E2BIG));
        let hdr = XsdSockmsg { len: XENSTORE_PAYLOAD_MAX + 1, ..hdr };
        assert_eq!(decode_message(hdr.as_bytes()), Err(Errno::E2BIG));
    }

    #[test]
    fn nul_field_edge_cases() {
        assert_eq!(nul_fields(b"").count(), 0);
        assert_eq!(nul_fields(b"\0").collect::<Vec<_>>(), [&b""[..]]);
        assert_eq!(nul_fields(b"a\0\0").collect::<Vec<_>>(), [&b"a"[..], b""]);
    }

    proptest! {
        #[test]
        fn decode_never_reads_past_the_buffer(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            match decode_message(&buf) {
                Ok(Some(m)) => {
                    prop_assert!(m.used <= buf.len());
                    prop_assert_eq!(m.payload.len(), m.hdr.len as usize);
                }
                Ok(None) => {
                    let complete = buf.len() >= 16
                        && 16 + u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize <= buf.len();
                    prop_assert!(!complete);
                }
                Err(e) => prop_assert_eq!(e, Errno::E2BIG),
            }
        }

        #[test]
        fn encode_round_trips(req_id: u32, tx_id: u32, t in 0usize..26, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ty = XsdSockmsgType::ALL[t];
            let mut buf = [0u8; 400];
            let n = encode_message(&mut buf, ty, req_id, tx_id, &[&payload]).unwrap();
            let m = decode_message(&buf).unwrap().unwrap();
            prop_assert_eq!((m.hdr.msg_type(), m.hdr.req_id, m.hdr.tx_id, m.used), (Some(ty), req_id, tx_id, n));
            prop_assert_eq!(m.payload, &payload[..]);
        }
    }
}
