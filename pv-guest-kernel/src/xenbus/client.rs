//! The xenstore client every domain uses: requests and replies matched by `req_id`, watch
//! events queued as they arrive, errors turned back into [`Errno`] through xs_wire's table.
//!
//! The client is written against a [`Transport`] so the same code runs over a domain's ring
//! page (the kernel's [`super::RingTransport`]), over dom0's in-process connection to its own
//! xenstored, and over fakes in host tests. It sends one request at a time and blocks in
//! [`Transport::wait`] until the reply is in; watch events that arrive meanwhile are kept
//! (at most [`WATCH_QUEUE_MAX`], the oldest dropped and counted) for [`Xenbus::next_watch_event`].
//!
//! The server is trusted to be xenstored but not to be well-behaved: a reply announcing more
//! than `XENSTORE_PAYLOAD_MAX` bytes, or of another type than the request, is an error, and
//! nothing here allocates more than one message plus one ring's worth of bytes.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use hypercall_abi::io::xs_wire::{self, XsdSockmsgType, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE};
use hypercall_abi::{DomId, Errno};

/// How the client reaches xenstored.
pub trait Transport {
    /// Queues as many of `bytes` as fit (notifying the server) and returns how many; 0 when
    /// the way is full for now.
    fn send(&mut self, bytes: &[u8]) -> Result<usize, Errno>;
    /// Takes up to `buf.len()` bytes the server sent (notifying it that there is room again).
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;
    /// Blocks until the server may have done something (an event), or fails with
    /// `ETIMEDOUT` when it has been silent for too long.
    fn wait(&mut self) -> Result<(), Errno>;
}

/// A transaction id; [`TxId::NONE`] outside transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// Not in a transaction.
    pub const NONE: TxId = TxId(0);
}

/// A fired watch: the path that changed (relative if the watch was registered relative) and
/// the token given to [`Xenbus::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Watch events kept while nobody asks for them.
pub const WATCH_QUEUE_MAX: usize = 64;
/// Bytes of incoming stream buffered at most: one whole message plus one ring's worth.
const RX_MAX: usize = 2 * (XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX as usize);
/// Attempts [`Xenbus::transaction`] makes before giving up with `EAGAIN`.
pub const TRANSACTION_TRIES: u32 = 16;

/// A xenstore connection.
pub struct Xenbus<T> {
    t: T,
    next_req_id: u32,
    /// The request a reply is awaited for, and the reply once in (type, payload).
    awaiting: Option<u32>,
    reply: Option<(u32, Vec<u8>)>,
    rx: Vec<u8>,
    events: VecDeque<WatchEvent>,
    dropped_events: u64,
    /// A request was abandoned half-sent or the server broke the stream: the byte stream is
    /// out of step until [`Xenbus::reset`].
    desync: bool,
}

impl<T: Transport> Xenbus<T> {
    /// A client over `t`.
    pub fn new(t: T) -> Xenbus<T> {
        Xenbus {
            t,
            next_req_id: 1,
            awaiting: None,
            reply: None,
            rx: Vec::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            desync: false,
        }
    }

    /// The transport (e.g. to reconnect the ring underneath).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// Forgets every partial message and queued event (after the connection underneath was
    /// reset: the server forgot our watches and transactions too).
    pub fn reset(&mut self) {
        self.rx.clear();
        self.events.clear();
        self.awaiting = None;
        self.reply = None;
        self.desync = false;
    }

    /// True if the stream is out of step (see [`Xenbus::reset`]).
    pub fn is_desynchronised(&self) -> bool {
        self.desync
    }

    /// Watch events dropped because nobody took them.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Sends raw bytes as they are (tests of the server's handling of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let mut sent = 0;
        while sent < bytes.len() {
            let n = self.t.send(&bytes[sent..])?;
            sent += n;
            if n == 0 {
                if let Err(e) = self.t.wait() {
                    self.desync = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Reads whatever the server sent and files it: replies by `req_id`, watch events in
    /// the queue.
    pub fn pump(&mut self) -> Result<(), Errno> {
        let mut chunk = [0u8; 512];
        loop {
            let room = RX_MAX.saturating_sub(self.rx.len()).min(chunk.len());
            if room == 0 {
                break;
            }
            let n = self.t.recv(&mut chunk[..room])?;
            if n == 0 {
                break;
            }
            self.rx.extend_from_slice(&chunk[..n.min(room)]);
            self.decode_all()?;
        }
        self.decode_all()
    }

    fn decode_all(&mut self) -> Result<(), Errno> {
        loop {
            let (hdr, payload, used) = match xs_wire::decode_message(&self.rx) {
                Ok(Some(m)) => (m.hdr, m.payload.to_vec(), m.used),
                Ok(None) => return Ok(()),
                Err(_) => {
                    self.rx.clear();
                    self.desync = true;
                    return Err(Errno::EIO);
                }
            };
            self.rx.drain(..used);
            if hdr.type_ == XsdSockmsgType::WatchEvent as u32 {
                self.queue_event(&payload);
            } else if self.awaiting == Some(hdr.req_id) {
                self.awaiting = None;
                self.reply = Some((hdr.type_, payload));
            }
            // Anything else answers a request we gave up on: dropped.
        }
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let mut f = xs_wire::nul_fields(payload);
        let (Some(path), Some(token)) = (f.next(), f.next()) else { return };
        if self.events.len() >= WATCH_QUEUE_MAX {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(WatchEvent { path: lossy(path), token: lossy(token) });
    }

    /// Sends one request and waits for its reply: the reply payload, or the error the
    /// server named (`EIO` for a name we do not know or a reply of the wrong type).
    pub fn request(&mut self, ty: XsdSockmsgType, tx: TxId, parts: &[&[u8]]) -> Result<Vec<u8>, Errno> {
        if self.desync {
            return Err(Errno::EIO);
        }
        let len = parts.iter().try_fold(0usize, |a, p| a.checked_add(p.len())).ok_or(Errno::E2BIG)?;
        if len > XENSTORE_PAYLOAD_MAX as usize {
            return Err(Errno::E2BIG);
        }
        let mut msg = alloc::vec![0u8; XSD_SOCKMSG_SIZE + len];
        let id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        xs_wire::encode_message(&mut msg, ty, id, tx.0, parts)?;
        self.awaiting = Some(id);
        self.reply = None;
        let mut sent = 0;
        let r = loop {
            if sent < msg.len() {
                match self.t.send(&msg[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) => break Err(e),
                }
            }
            if let Err(e) = self.pump() {
                break Err(e);
            }
            if let Some((rty, payload)) = self.reply.take() {
                break reply_result(ty, rty, payload);
            }
            if let Err(e) = self.t.wait() {
                // A half-sent request leaves the server mid-message; a whole one may still be
                // answered, and that late reply is recognised by its req_id and dropped.
                if sent < msg.len() {
                    self.desync = true;
                }
                break Err(e);
            }
        };
        self.awaiting = None;
        r
    }

    fn path_request(&mut self, ty: XsdSockmsgType, tx: TxId, path: &str) -> Result<Vec<u8>, Errno> {
        self.request(ty, tx, &[path.as_bytes(), b"\0"])
    }

    /// `XS_READ`: the node's value.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, Errno> {
        self.path_request(XsdSockmsgType::Read, tx, path)
    }

    /// `XS_READ` as text (invalid UTF-8 replaced).
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<String, Errno> {
        self.read(tx, path).map(|v| lossy(&v))
    }

    /// `XS_WRITE`: creates or replaces the node's value.
    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.request(XsdSockmsgType::Write, tx, &[path.as_bytes(), b"\0", value]).map(drop)
    }

    /// `XS_MKDIR`.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), Errno> {
        self.path_request(XsdSockmsgType::Mkdir, tx, path).map(drop)
    }

    /// `XS_RM`: removes the node and its subtree.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<(), Errno> {
        self.path_request(XsdSockmsgType::Rm, tx, path).map(drop)
    }

    /// `XS_DIRECTORY`: the children's names.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, Errno> {
        self.path_request(XsdSockmsgType::Directory, tx, path).map(|p| split_strings(&p))
    }

    /// `XS_GET_PERMS`: the permission list, e.g. `["n0", "r1"]` (owner first).
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, Errno> {
        self.path_request(XsdSockmsgType::GetPerms, tx, path).map(|p| split_strings(&p))
    }

    /// `XS_SET_PERMS` with entries like `"n1"` (owner 1, others none) and `"r0"`.
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &[&str]) -> Result<(), Errno> {
        let mut parts: Vec<&[u8]> = alloc::vec![path.as_bytes(), b"\0"];
        for p in perms {
            parts.push(p.as_bytes());
            parts.push(b"\0");
        }
        self.request(XsdSockmsgType::SetPerms, tx, &parts).map(drop)
    }

    /// `XS_WATCH`. xenstored fires every new watch once at once, so an event for `path`
    /// with `token` follows.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        self.request(XsdSockmsgType::Watch, TxId::NONE, &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"])
            .map(drop)
    }

    /// `XS_UNWATCH`; events of that watch already queued stay queued.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        self.request(XsdSockmsgType::Unwatch, TxId::NONE, &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"])
            .map(drop)
    }

    /// The oldest queued watch event, after reading what has arrived; never blocks.
    pub fn next_watch_event(&mut self) -> Result<Option<WatchEvent>, Errno> {
        self.pump()?;
        Ok(self.events.pop_front())
    }

    /// The oldest watch event, waiting for one if none is queued.
    pub fn wait_watch_event(&mut self) -> Result<WatchEvent, Errno> {
        loop {
            if let Some(e) = self.next_watch_event()? {
                return Ok(e);
            }
            self.t.wait()?;
        }
    }

    /// `XS_TRANSACTION_START`.
    pub fn transaction_start(&mut self) -> Result<TxId, Errno> {
        let p = self.request(XsdSockmsgType::TransactionStart, TxId::NONE, &[b"\0"])?;
        let s = lossy(&p);
        s.parse::<u32>().ok().filter(|&id| id != 0).map(TxId).ok_or(Errno::EIO)
    }

    /// `XS_TRANSACTION_END`: commit (`EAGAIN` if a node it read changed meanwhile) or abort.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), Errno> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(XsdSockmsgType::TransactionEnd, tx, &[arg]).map(drop)
    }

    /// Runs `f` in a transaction and commits it, starting over while the commit (or `f`)
    /// fails with `EAGAIN`, at most [`TRANSACTION_TRIES`] times. Any other error of `f`
    /// aborts the transaction and is returned.
    pub fn transaction<R>(
        &mut self,
        mut f: impl FnMut(&mut Self, TxId) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        for _ in 0..TRANSACTION_TRIES {
            let tx = self.transaction_start()?;
            match f(self, tx) {
                Ok(r) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(r),
                    Err(Errno::EAGAIN) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    if e != Errno::EAGAIN {
                        return Err(e);
                    }
                }
            }
        }
        Err(Errno::EAGAIN)
    }

    /// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, Errno> {
        let id = domid.0.to_string();
        self.request(XsdSockmsgType::GetDomainPath, TxId::NONE, &[id.as_bytes(), b"\0"]).map(|p| lossy(&p))
    }
}

fn reply_result(asked: XsdSockmsgType, ty: u32, payload: Vec<u8>) -> Result<Vec<u8>, Errno> {
    if ty == XsdSockmsgType::Error as u32 {
        return Err(xs_wire::error_from_payload(&payload).unwrap_or(Errno::EIO));
    }
    if ty != asked as u32 {
        return Err(Errno::EIO);
    }
    Ok(payload)
}

/// Text of a value or field: up to the first NUL, invalid UTF-8 replaced.
fn lossy(b: &[u8]) -> String {
    let b = b.split(|&c| c == 0).next().unwrap_or(b);
    String::from_utf8_lossy(b).into_owned()
}

/// `a\0b\0` → `["a", "b"]`.
fn split_strings(p: &[u8]) -> Vec<String> {
    xs_wire::nul_fields(p).map(lossy).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tiny scripted xenstored: a flat map of nodes, answering whole requests, with knobs
    /// for the misbehaviour a client must survive.
    #[derive(Default)]
    struct FakeServer {
        nodes: BTreeMap<String, Vec<u8>>,
        inbox: Vec<u8>,
        outbox: VecDeque<u8>,
        /// Bytes `send` accepts per call.
        send_chunk: usize,
        /// Bytes `recv` returns per call.
        recv_chunk: usize,
        /// Commits that fail with EAGAIN before one succeeds.
        conflicts: u32,
        /// Send a stale reply and a watch event before each reply.
        noisy: bool,
        /// Never answer.
        silent: bool,
        waits: u32,
        requests: Vec<(u32, u32, u32)>,
        /// Every byte the client sent.
        raw: Vec<u8>,
    }

    impl FakeServer {
        fn new() -> FakeServer {
            FakeServer { send_chunk: 4096, recv_chunk: 4096, ..Default::default() }
        }

        fn emit(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
            let h = xs_wire::XsdSockmsg { type_: ty, req_id, tx_id, len: payload.len() as u32 };
            self.outbox.extend(zerocopy::IntoBytes::as_bytes(&h));
            self.outbox.extend(payload);
        }

        fn serve(&mut self) {
            while let Ok(Some(m)) = xs_wire::decode_message(&self.inbox) {
                let (h, payload, used) = (m.hdr, m.payload.to_vec(), m.used);
                self.inbox.drain(..used);
                self.requests.push((h.type_, h.req_id, h.tx_id));
                if self.silent {
                    continue;
                }
                if self.noisy {
                    self.emit(h.type_, h.req_id.wrapping_sub(1), 0, b"stale\0");
                    self.emit(XsdSockmsgType::WatchEvent as u32, 0, 0, b"/noise\0tok\0");
                }
                let f: Vec<Vec<u8>> = xs_wire::nul_fields(&payload).map(|x| x.to_vec()).collect();
                let path = f.first().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
                let ty = XsdSockmsgType::from_u32(h.type_);
                let r: Result<Vec<u8>, &str> = match ty {
                    Some(XsdSockmsgType::Read) => self.nodes.get(&path).cloned().ok_or("ENOENT"),
                    Some(XsdSockmsgType::Write) => {
                        let at = payload.iter().position(|&b| b == 0).unwrap() + 1;
                        self.nodes.insert(path, payload[at..].to_vec());
                        Ok(b"OK\0".to_vec())
                    }
                    Some(XsdSockmsgType::Directory) => {
                        let mut out = Vec::new();
                        for k in self.nodes.keys() {
                            if let Some(rest) = k.strip_prefix(&format!("{path}/")) {
                                out.extend_from_slice(rest.as_bytes());
                                out.push(0);
                            }
                        }
                        Ok(out)
                    }
                    Some(XsdSockmsgType::Watch) => Ok(b"OK\0".to_vec()),
                    Some(XsdSockmsgType::TransactionStart) => Ok(b"7\0".to_vec()),
                    Some(XsdSockmsgType::TransactionEnd) if self.conflicts > 0 && f[0] == b"T" => {
                        self.conflicts -= 1;
                        Err("EAGAIN")
                    }
                    Some(XsdSockmsgType::TransactionEnd) => Ok(b"OK\0".to_vec()),
                    Some(XsdSockmsgType::GetDomainPath) => Ok(format!("/local/domain/{path}\0").into_bytes()),
                    Some(XsdSockmsgType::GetPerms) => Ok(b"n0\0r1\0".to_vec()),
                    Some(XsdSockmsgType::SetPerms) => {
                        if f.len() == 3 && f[1] == b"n1" && f[2] == b"r0" {
                            Ok(b"OK\0".to_vec())
                        } else {
                            Err("EINVAL")
                        }
                    }
                    _ => Err("EWHAT"),
                };
                match r {
                    Ok(p) => self.emit(h.type_, h.req_id, h.tx_id, &p),
                    Err(e) => self.emit(16, h.req_id, h.tx_id, format!("{e}\0").as_bytes()),
                }
                if ty == Some(XsdSockmsgType::Watch) {
                    let ev = [&payload[..]].concat();
                    self.emit(XsdSockmsgType::WatchEvent as u32, 0, 0, &ev);
                }
            }
        }
    }

    impl Transport for FakeServer {
        fn send(&mut self, bytes: &[u8]) -> Result<usize, Errno> {
            let n = bytes.len().min(self.send_chunk);
            self.inbox.extend_from_slice(&bytes[..n]);
            self.raw.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
            let n = buf.len().min(self.recv_chunk).min(self.outbox.len());
            for b in buf.iter_mut().take(n) {
                *b = self.outbox.pop_front().unwrap();
            }
            Ok(n)
        }
        fn wait(&mut self) -> Result<(), Errno> {
            self.waits += 1;
            if self.waits > 10_000 || (self.silent && self.waits > 3) {
                return Err(Errno::ETIMEDOUT);
            }
            self.serve();
            Ok(())
        }
    }

    fn client() -> Xenbus<FakeServer> {
        Xenbus::new(FakeServer::new())
    }

    #[test]
    fn basic_requests() {
        let mut xb = client();
        xb.write(TxId::NONE, "data/a", b"1").unwrap();
        xb.write(TxId::NONE, "data/b", b"two").unwrap();
        assert_eq!(xb.read(TxId::NONE, "data/a").unwrap(), b"1");
        assert_eq!(xb.read_string(TxId::NONE, "data/b").unwrap(), "two");
        assert_eq!(xb.directory(TxId::NONE, "data").unwrap(), ["a", "b"]);
        assert_eq!(xb.read(TxId::NONE, "nope"), Err(Errno::ENOENT));
        assert_eq!(xb.get_domain_path(DomId(3)).unwrap(), "/local/domain/3");
        assert_eq!(xb.get_perms(TxId::NONE, "x").unwrap(), ["n0", "r1"]);
        xb.set_perms(TxId::NONE, "x", &["n1", "r0"]).unwrap();
        assert_eq!(xb.set_perms(TxId::NONE, "x", &["n1"]), Err(Errno::EINVAL));
        // An error name we do not know is EIO, not a panic.
        assert_eq!(xb.mkdir(TxId::NONE, "d"), Err(Errno::EIO));
        let ids: Vec<u32> = xb.t.requests.iter().map(|r| r.1).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "fresh req_id per request");
    }

    #[test]
    fn wire_format_of_a_write() {
        let mut xb = client();
        xb.t.silent = true;
        assert_eq!(xb.write(TxId(9), "a/b", b"v"), Err(Errno::ETIMEDOUT));
        let mut want = Vec::new();
        let h = xs_wire::XsdSockmsg { type_: 11, req_id: 1, tx_id: 9, len: 5 };
        want.extend_from_slice(zerocopy::IntoBytes::as_bytes(&h));
        want.extend_from_slice(b"a/b\0v");
        assert_eq!(xb.t.raw, want);
        assert_eq!(xb.t.requests, [(11, 1, 9)]);
        assert!(!xb.is_desynchronised(), "a whole request was sent");
        // A request abandoned half-sent leaves the stream out of step.
        xb.t.send_chunk = 0;
        assert_eq!(xb.write(TxId::NONE, "a", b"v"), Err(Errno::ETIMEDOUT));
        assert!(xb.is_desynchronised());
    }

    #[test]
    fn trickling_transport_and_noise() {
        let mut xb = client();
        xb.t.send_chunk = 3;
        xb.t.recv_chunk = 1;
        xb.t.noisy = true;
        xb.write(TxId::NONE, "k", b"value").unwrap();
        assert_eq!(xb.read(TxId::NONE, "k").unwrap(), b"value");
        // Stale replies were ignored; the watch events were queued.
        let e = xb.next_watch_event().unwrap().unwrap();
        assert_eq!(e, WatchEvent { path: "/noise".into(), token: "tok".into() });
    }

    #[test]
    fn watch_fires_once_at_registration() {
        let mut xb = client();
        xb.watch("data/pong", "t1").unwrap();
        assert_eq!(
            xb.wait_watch_event().unwrap(),
            WatchEvent { path: "data/pong".into(), token: "t1".into() }
        );
        assert_eq!(xb.next_watch_event().unwrap(), None);
    }

    #[test]
    fn event_queue_is_bounded() {
        let mut xb = client();
        for i in 0..(WATCH_QUEUE_MAX + 10) {
            xb.t.emit(15, 0, 0, format!("/p{i}\0t\0").as_bytes());
        }
        xb.pump().unwrap();
        assert_eq!(xb.dropped_events(), 10);
        assert_eq!(xb.next_watch_event().unwrap().unwrap().path, "/p10");
    }

    #[test]
    fn transactions_retry_on_eagain() {
        let mut xb = client();
        xb.t.conflicts = 3;
        let mut runs = 0;
        let r = xb.transaction(|xb, tx| {
            runs += 1;
            assert_eq!(tx, TxId(7));
            xb.write(tx, "n", b"x")
        });
        assert_eq!(r, Ok(()));
        assert_eq!(runs, 4);
        xb.t.conflicts = 100;
        assert_eq!(xb.transaction(|_, _| Ok(())), Err(Errno::EAGAIN));
        // Another error aborts (an F end is sent) and is returned as is.
        let before = xb.t.requests.len();
        assert_eq!(xb.transaction(|_, _| Err::<(), _>(Errno::EACCES)), Err(Errno::EACCES));
        assert_eq!(xb.t.requests.len(), before + 2);
    }

    #[test]
    fn local_limits_and_broken_server() {
        let mut xb = client();
        let big = vec![b'x'; XENSTORE_PAYLOAD_MAX as usize];
        assert_eq!(xb.write(TxId::NONE, "p", &big), Err(Errno::E2BIG));
        assert!(xb.t.requests.is_empty(), "nothing sent");
        // A server announcing an impossible length breaks the stream.
        xb.t.emit(2, 99, 0, &[]);
        xb.t.outbox.truncate(12);
        xb.t.outbox.extend(&u32::MAX.to_le_bytes());
        assert_eq!(xb.pump(), Err(Errno::EIO));
        assert!(xb.is_desynchronised());
        assert_eq!(xb.read(TxId::NONE, "k"), Err(Errno::EIO));
        xb.reset();
        xb.write(TxId::NONE, "k", b"1").unwrap();
    }

    #[test]
    fn reply_of_the_wrong_type_is_an_error() {
        assert_eq!(reply_result(XsdSockmsgType::Read, 11, b"OK\0".to_vec()), Err(Errno::EIO));
        assert_eq!(reply_result(XsdSockmsgType::Read, 16, b"EACCES\0".to_vec()), Err(Errno::EACCES));
        assert_eq!(reply_result(XsdSockmsgType::Read, 2, b"v".to_vec()), Ok(b"v".to_vec()));
        assert_eq!(split_strings(b""), Vec::<String>::new());
        assert_eq!(lossy(b"ab\0cd"), "ab");
    }

    proptest::proptest! {
        /// Any server byte stream: the client never panics and never buffers more than RX_MAX.
        #[test]
        fn hostile_stream(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)) {
            let mut xb = client();
            xb.t.outbox.extend(&bytes);
            let _ = xb.pump();
            proptest::prop_assert!(xb.rx.len() <= RX_MAX);
            proptest::prop_assert!(xb.events.len() <= WATCH_QUEUE_MAX);
        }
    }
}
