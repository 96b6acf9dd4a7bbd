//! The xenstore byte stream: `xsd_sockmsg` headers, a streaming decoder that rebuilds whole
//! messages from ring bytes arriving in any chunking, and reply encoding.
//!
//! A guest writes requests into its ring a few bytes at a time if it likes, so nothing here
//! assumes a message arrives in one piece. The only stream-level error is a header announcing
//! more than `XENSTORE_PAYLOAD_MAX` bytes: xenstored cannot resynchronise after that (it does
//! not know where the next header starts), so it stops talking to the connection and reports
//! `XENSTORE_ERROR_PROTO` in the ring's `error` field. We do the same.

use alloc::vec::Vec;

use hypercall_abi::io::xs_wire::{
    ring_error, XsdSockmsg, XsdSockmsgType, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX, XSD_SOCKMSG_SIZE,
};
use zerocopy::IntoBytes;

/// `XENSTORE_PAYLOAD_MAX` as a length.
pub const PAYLOAD_MAX: usize = XENSTORE_PAYLOAD_MAX as usize;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = XENSTORE_ABS_PATH_MAX;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = XENSTORE_REL_PATH_MAX;

/// Types only a privileged connection may send (xenstored's `XS_FLAG_PRIV`).
pub fn privileged_only(t: XsdSockmsgType) -> bool {
    matches!(
        t,
        XsdSockmsgType::Control
            | XsdSockmsgType::Introduce
            | XsdSockmsgType::Release
            | XsdSockmsgType::IsDomainIntroduced
            | XsdSockmsgType::Resume
            | XsdSockmsgType::SetTarget
    )
}

/// Types whose `tx_id` is ignored (xenstored's `XS_FLAG_NOTID`): watches are not
/// transactional.
pub fn ignores_tx_id(t: XsdSockmsgType) -> bool {
    matches!(t, XsdSockmsgType::Watch | XsdSockmsgType::Unwatch)
}

/// Types xenstored answers (the rest get `ENOSYS`): not the server-to-client types, and not
/// the feature and quota calls newer xenstored added, which we do not offer.
pub fn is_handled(t: XsdSockmsgType) -> bool {
    !matches!(
        t,
        XsdSockmsgType::WatchEvent
            | XsdSockmsgType::Error
            | XsdSockmsgType::GetFeature
            | XsdSockmsgType::SetFeature
            | XsdSockmsgType::GetQuota
            | XsdSockmsgType::SetQuota
    )
}

/// Parses the 16 header bytes (native little-endian, as both ends of a ring share a host).
pub fn header_from_bytes(b: &[u8; XSD_SOCKMSG_SIZE]) -> XsdSockmsg {
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    XsdSockmsg { type_: word(0), req_id: word(4), tx_id: word(8), len: word(12) }
}

/// One whole message: a header and exactly `header.len` payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header; `len` always equals `payload.len()`.
    pub header: XsdSockmsg,
    /// At most [`PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Builds a message, or `None` if the payload is too long for the protocol.
    pub fn new(ty: u32, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Option<Message> {
        if payload.len() > PAYLOAD_MAX {
            return None;
        }
        let len = payload.len() as u32;
        Some(Message { header: XsdSockmsg { type_: ty, req_id, tx_id, len }, payload })
    }

    /// Header followed by payload, ready for a ring.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(XSD_SOCKMSG_SIZE + self.payload.len());
        out.extend_from_slice(self.header.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        XSD_SOCKMSG_SIZE + self.payload.len()
    }
}

/// Why a byte stream can no longer be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// A header announced this many payload bytes, more than [`PAYLOAD_MAX`].
    PayloadTooLong(u32),
}

impl StreamError {
    /// The `XENSTORE_ERROR_*` value to put in the ring's `error` field.
    pub fn ring_error(self) -> u32 {
        match self {
            StreamError::PayloadTooLong(_) => ring_error::XENSTORE_ERROR_PROTO,
        }
    }
}

/// Reassembles messages from a byte stream delivered in arbitrary pieces.
///
/// Memory is bounded: at most one header and one [`PAYLOAD_MAX`]-byte payload are buffered.
#[derive(Debug, Default)]
pub struct Decoder {
    hdr: [u8; XSD_SOCKMSG_SIZE],
    hdr_fill: usize,
    header: Option<XsdSockmsg>,
    payload: Vec<u8>,
    broken: Option<StreamError>,
}

impl Decoder {
    /// A decoder at a message boundary.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.hdr_fill == 0 && self.header.is_none() && self.broken.is_none()
    }

    /// Heap bytes held for a partial message.
    pub fn buffered(&self) -> usize {
        self.payload.capacity()
    }

    /// The error that stopped the stream, if any.
    pub fn error(&self) -> Option<StreamError> {
        self.broken
    }

    /// Forgets any partial message and a previous error (used when a connection is reset).
    pub fn reset(&mut self) {
        *self = Decoder::default();
    }

    /// Consumes bytes of `input` until one message is complete or `input` is used up.
    ///
    /// Returns how many bytes were consumed and the completed message, if any. Call again with
    /// the remaining bytes to get further messages. Once an error is returned the decoder
    /// consumes nothing more and keeps returning that error.
    pub fn decode(&mut self, input: &[u8]) -> (usize, Result<Option<Message>, StreamError>) {
        if let Some(e) = self.broken {
            return (0, Err(e));
        }
        let mut used = 0;
        if self.header.is_none() {
            let take = (XSD_SOCKMSG_SIZE - self.hdr_fill).min(input.len());
            self.hdr[self.hdr_fill..self.hdr_fill + take].copy_from_slice(&input[..take]);
            self.hdr_fill += take;
            used += take;
            if self.hdr_fill < XSD_SOCKMSG_SIZE {
                return (used, Ok(None));
            }
            let header = header_from_bytes(&self.hdr);
            if header.len as usize > PAYLOAD_MAX {
                self.broken = Some(StreamError::PayloadTooLong(header.len));
                return (used, Err(StreamError::PayloadTooLong(header.len)));
            }
            self.payload = Vec::with_capacity(header.len as usize);
            self.header = Some(header);
        }
        let Some(header) = self.header else { return (used, Ok(None)) };
        let want = header.len as usize - self.payload.len();
        let take = want.min(input.len() - used);
        self.payload.extend_from_slice(&input[used..used + take]);
        used += take;
        if self.payload.len() < header.len as usize {
            return (used, Ok(None));
        }
        self.header = None;
        self.hdr_fill = 0;
        let payload = core::mem::take(&mut self.payload);
        (used, Ok(Some(Message { header, payload })))
    }
}

/// Splits a payload into its NUL-terminated strings, like xenstored's `get_strings`: bytes
/// after the last NUL are not a string and are ignored.
pub fn nul_strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = payload.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
    payload[..end].split(|&b| b == 0).take(payload[..end].iter().filter(|&&b| b == 0).count())
}

/// The payload as exactly one NUL-terminated string (xenstored's `onearg`): non-empty, with its
/// only NUL at the end.
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    let (last, body) = payload.split_last()?;
    if *last != 0 || body.contains(&0) {
        return None;
    }
    Some(body)
}
