//! Unit tests of the xenstore core through its wire interface, the way guests use it.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use hypercall_abi::{DomId, Errno, Port};

use super::path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use super::toolstack::{backend_path, frontend_path, Console, DeviceConfig, DomainConfig, StoreRing};
use super::wire::PAYLOAD_MAX;
use super::*;
use hypercall_abi::io::xs_wire::{
    error_name, ring_error::XENSTORE_ERROR_PROTO, XSD_SOCKMSG_SIZE as HEADER_LEN,
};
use zerocopy::IntoBytes;

/// A test harness: a server plus the bookkeeping of a client library.
pub(super) struct Xs {
    pub xs: Xenstore,
    pub dom0: ConnId,
    req_id: u32,
    /// Watch events read from each connection and not yet looked at.
    events: BTreeMap<ConnId, Vec<(String, String)>>,
}

pub(super) type Res = Result<Vec<u8>, String>;

/// Decodes every message in `bytes` (which must be whole messages).
pub(super) fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (n, r) = d.decode(&bytes[at..]);
        at += n;
        if let Some(m) = r.expect("server output must decode") {
            out.push(m);
        }
    }
    assert!(d.is_idle(), "server output ends mid-message");
    out
}

fn event_of(m: &Message) -> (String, String) {
    let mut it = m.payload.split(|&b| b == 0);
    let p = String::from_utf8(it.next().unwrap().to_vec()).unwrap();
    let t = String::from_utf8(it.next().unwrap().to_vec()).unwrap();
    assert_eq!(m.payload.last(), Some(&0));
    (p, t)
}

impl Xs {
    pub fn new() -> Xs {
        Xs::with_quotas(Quotas::default())
    }

    pub fn with_quotas(q: Quotas) -> Xs {
        let mut xs = Xenstore::new(q);
        let dom0 = xs.connect_local(DomId::DOM0);
        Xs { xs, dom0, req_id: 0, events: BTreeMap::new() }
    }

    /// Introduces `domid` through dom0's connection and returns its ring connection.
    pub fn introduce(&mut self, domid: u16) -> ConnId {
        let d0 = self.dom0;
        let r = self.call(d0, 0, &Request::Introduce { domid: DomId(domid), gfn: 0x1234, port: Port(7) });
        assert_eq!(r, ok());
        self.xs.domain_conn(DomId(domid)).unwrap()
    }

    /// Reads all of a connection's output, stashing events; returns the replies.
    fn pump(&mut self, c: ConnId) -> Vec<Message> {
        let mut bytes = alloc::vec![0u8; self.xs.pending_output(c)];
        let n = self.xs.read_output(c, &mut bytes);
        assert_eq!(n, bytes.len());
        assert_eq!(self.xs.pending_output(c), 0);
        let mut replies = Vec::new();
        for m in decode_all(&bytes) {
            if m.header.type_ == XsdSockmsgType::WatchEvent as u32 {
                assert_eq!((m.header.req_id, m.header.tx_id), (0, 0));
                self.events.entry(c).or_default().push(event_of(&m));
            } else {
                replies.push(m);
            }
        }
        replies
    }

    /// Sends a raw message and returns the single reply.
    pub fn raw(&mut self, c: ConnId, ty: u32, tx: u32, payload: &[u8]) -> Message {
        self.req_id = self.req_id.wrapping_add(1);
        let m = Message::new(ty, self.req_id, tx, payload.to_vec()).unwrap();
        let bytes = m.encode();
        assert_eq!(self.xs.feed(c, &bytes), Ok(bytes.len()));
        let mut replies = self.pump(c);
        assert_eq!(replies.len(), 1, "exactly one reply per request");
        let r = replies.pop().unwrap();
        assert_eq!(r.header.req_id, self.req_id, "req_id echoed");
        assert_eq!(r.header.tx_id, tx, "tx_id echoed");
        assert!(r.payload.len() <= PAYLOAD_MAX);
        r
    }

    /// Sends `req` in transaction `tx`; Ok(reply payload) or Err(errno name).
    pub fn call(&mut self, c: ConnId, tx: u32, req: &Request) -> Res {
        let ty = req.msg_type();
        let r = self.raw(c, ty as u32, tx, &req.to_payload());
        as_result(ty, &r)
    }

    /// The watch events delivered to `c` since the last look.
    pub fn events(&mut self, c: ConnId) -> Vec<(String, String)> {
        let extra = self.pump(c);
        assert!(extra.is_empty(), "unexpected replies");
        self.events.remove(&c).unwrap_or_default()
    }

    pub fn write(&mut self, c: ConnId, path: &str, value: &str) -> Res {
        self.call(c, 0, &Request::Write { path: path.into(), value: value.as_bytes().to_vec() })
    }
    pub fn read(&mut self, c: ConnId, path: &str) -> Res {
        self.call(c, 0, &Request::Read { path: path.into() })
    }
    pub fn mkdir(&mut self, c: ConnId, path: &str) -> Res {
        self.call(c, 0, &Request::Mkdir { path: path.into() })
    }
    pub fn rm(&mut self, c: ConnId, path: &str) -> Res {
        self.call(c, 0, &Request::Rm { path: path.into() })
    }
    pub fn dir(&mut self, c: ConnId, path: &str) -> Result<Vec<String>, String> {
        let r = self.call(c, 0, &Request::Directory { path: path.into() })?;
        Ok(split_strings(&r))
    }
    pub fn set_perms(&mut self, c: ConnId, path: &str, perms: Perms) -> Res {
        self.call(c, 0, &Request::SetPerms { path: path.into(), perms })
    }
    pub fn get_perms(&mut self, c: ConnId, path: &str) -> Result<Vec<String>, String> {
        Ok(split_strings(&self.call(c, 0, &Request::GetPerms { path: path.into() })?))
    }
    pub fn watch(&mut self, c: ConnId, path: &str, token: &str) -> Res {
        self.call(c, 0, &Request::Watch { path: path.into(), token: token.as_bytes().to_vec() })
    }
    pub fn tx_start(&mut self, c: ConnId) -> u32 {
        let r = self.call(c, 0, &Request::TransactionStart).unwrap();
        core::str::from_utf8(&r[..r.len() - 1]).unwrap().parse().unwrap()
    }
    pub fn tx_end(&mut self, c: ConnId, tx: u32, commit: bool) -> Res {
        self.call(c, tx, &Request::TransactionEnd { commit })
    }
}

pub(super) fn as_result(ty: XsdSockmsgType, r: &Message) -> Res {
    if r.header.type_ == XsdSockmsgType::Error as u32 {
        assert_eq!(r.payload.last(), Some(&0));
        let name = String::from_utf8(r.payload[..r.payload.len() - 1].to_vec()).unwrap();
        assert!(Errno::from_name(&name).is_some(), "{name} is an errno name");
        Err(name)
    } else {
        assert_eq!(r.header.type_, ty as u32, "reply has the request's type");
        Ok(r.payload.clone())
    }
}

pub(super) fn ok() -> Res {
    Ok(b"OK\0".to_vec())
}

fn err(e: Errno) -> Res {
    Err(e.name().to_string())
}

fn val(s: &str) -> Res {
    Ok(s.as_bytes().to_vec())
}

fn split_strings(r: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = r.split(|&b| b == 0).map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
    assert_eq!(v.pop().as_deref(), Some(""), "list ends with NUL");
    v
}

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_string(), t.to_string())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn domain_cfg(domid: u16) -> DomainConfig {
    DomainConfig {
        domid: DomId(domid),
        name: alloc::format!("guest{domid}"),
        memory_kb: 65536,
        vcpus: 2,
        store: Some(StoreRing { gfn: 0x100, port: Port(1) }),
        console: Some(Console {
            gfn: 0x101,
            port: Port(2),
            backend: DomId::DOM0,
            kind: "xenconsoled".into(),
            limit: Some(1048576),
        }),
    }
}

/// dom0 + introduced domains 1 and 2 with the toolstack's standard nodes.
fn two_guests() -> (Xs, ConnId, ConnId) {
    let mut t = Xs::new();
    for d in [1, 2] {
        t.xs.create_domain_nodes(&domain_cfg(d)).unwrap();
    }
    let a = t.introduce(1);
    let b = t.introduce(2);
    t.xs.take_actions();
    (t, a, b)
}

// ---------------------------------------------------------------- protocol

#[test]
fn header_round_trip() {
    let h = XsdSockmsg { type_: 11, req_id: 0xdead_beef, tx_id: 7, len: 42 };
    let bytes: [u8; HEADER_LEN] = h.as_bytes().try_into().unwrap();
    assert_eq!(super::wire::header_from_bytes(&bytes), h);
    assert_eq!(bytes[0..4], 11u32.to_le_bytes());
}

#[test]
fn type_classes() {
    use super::wire::{ignores_tx_id, is_handled, privileged_only};
    let privileged: Vec<_> = XsdSockmsgType::ALL.into_iter().filter(|t| privileged_only(*t)).collect();
    assert_eq!(
        privileged,
        [
            XsdSockmsgType::Control,
            XsdSockmsgType::Introduce,
            XsdSockmsgType::Release,
            XsdSockmsgType::IsDomainIntroduced,
            XsdSockmsgType::Resume,
            XsdSockmsgType::SetTarget
        ]
    );
    assert!(ignores_tx_id(XsdSockmsgType::Watch) && ignores_tx_id(XsdSockmsgType::Unwatch));
    assert!(!ignores_tx_id(XsdSockmsgType::Read));
    let unhandled: Vec<u32> =
        XsdSockmsgType::ALL.into_iter().filter(|t| !is_handled(*t)).map(|t| t as u32).collect();
    assert_eq!(unhandled, [15, 16, 23, 24, 25, 26]);
}

#[test]
fn decoder_byte_by_byte_and_batched() {
    let a = Message::new(2, 1, 0, b"/a\0".to_vec()).unwrap();
    let b = Message::new(11, 2, 3, b"/b\0xyz".to_vec()).unwrap();
    let c = Message::new(6, 3, 0, Vec::new()).unwrap();
    let mut stream = a.encode();
    stream.extend(b.encode());
    stream.extend(c.encode());

    let mut d = Decoder::new();
    let mut got = Vec::new();
    for byte in &stream {
        let (n, r) = d.decode(core::slice::from_ref(byte));
        assert_eq!(n, 1);
        got.extend(r.unwrap());
    }
    assert_eq!(got, [a.clone(), b.clone(), c.clone()]);
    assert!(d.is_idle());

    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let (n, r) = d.decode(&stream[at..]);
        at += n;
        got.extend(r.unwrap());
    }
    assert_eq!(got, [a, b, c]);
}

#[test]
fn decoder_rejects_oversized_length_and_stays_broken() {
    let mut d = Decoder::new();
    let h = XsdSockmsg { type_: 2, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 + 1 };
    let (n, r) = d.decode(h.as_bytes());
    assert_eq!(n, HEADER_LEN);
    assert_eq!(r, Err(StreamError::PayloadTooLong(4097)));
    assert_eq!(d.decode(b"more"), (0, Err(StreamError::PayloadTooLong(4097))));
    assert_eq!(StreamError::PayloadTooLong(4097).ring_error(), XENSTORE_ERROR_PROTO);

    // Exactly the maximum is fine.
    let mut d = Decoder::new();
    let m = Message::new(11, 1, 0, alloc::vec![b'x'; PAYLOAD_MAX]).unwrap();
    let (n, r) = d.decode(&m.encode());
    assert_eq!(n, HEADER_LEN + PAYLOAD_MAX);
    assert_eq!(r, Ok(Some(m)));
    assert!(Message::new(11, 1, 0, alloc::vec![0; PAYLOAD_MAX + 1]).is_none());
}

#[test]
fn oversized_length_breaks_connection() {
    let (mut t, a, _) = two_guests();
    t.write(a, "data/x", "1").unwrap();
    t.watch(a, "data", "tok").unwrap();
    t.events(a);
    let h = XsdSockmsg { type_: 2, req_id: 9, tx_id: 0, len: 5000 };
    assert_eq!(t.xs.feed(a, h.as_bytes()), Err(FeedError::Protocol(StreamError::PayloadTooLong(5000))));
    assert_eq!(
        t.xs.take_actions(),
        [Action::ConnectionBroken { conn: a, domid: DomId(1), ring_error: XENSTORE_ERROR_PROTO }]
    );
    assert_eq!(t.xs.pending_output(a), 0, "no reply to a corrupt stream");
    assert_eq!(t.xs.watch_count(a), 0, "an ignored connection loses its watches");
    assert!(matches!(t.xs.feed(a, b"anything"), Err(FeedError::Protocol(_))));
    // The rest of the world carries on.
    let d0 = t.dom0;
    assert_eq!(t.read(d0, "/local/domain/1/data/x"), val("1"));
    // Re-introducing resets the connection.
    t.introduce(1);
    assert_eq!(t.read(a, "data/x"), val("1"));
}

#[test]
fn unknown_types_get_enosys_with_ids_echoed() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    for ty in [15u32, 16, 20, 23, 24, 25, 26, 27, 99, 0xffff, u32::MAX] {
        let r = t.raw(d0, ty, 0, b"/x\0");
        assert_eq!(r.header.type_, XsdSockmsgType::Error as u32);
        assert_eq!(r.payload, b"ENOSYS\0");
    }
    // tx_id is echoed even on errors.
    let r = t.raw(d0, XsdSockmsgType::Read as u32, 77, b"/\0");
    assert_eq!(r.header.tx_id, 77);
    assert_eq!(r.payload, b"ENOENT\0", "unknown transaction");
}

#[test]
fn malformed_payloads_get_einval() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    let cases: &[(XsdSockmsgType, &[u8])] = &[
        (XsdSockmsgType::Read, b"/tool"),            // no NUL
        (XsdSockmsgType::Read, b""),                 // nothing
        (XsdSockmsgType::Read, b"/tool\0x\0"),       // two strings
        (XsdSockmsgType::Read, b"/to\0ol\0"),        // embedded NUL
        (XsdSockmsgType::Write, b"/tool/x"),         // no NUL after the path
        (XsdSockmsgType::Mkdir, b"\0"),              // empty path
        (XsdSockmsgType::Rm, b"/a/\0"),              // trailing slash
        (XsdSockmsgType::Rm, b"/a//b\0"),            // double slash
        (XsdSockmsgType::Read, b"/a b\0"),           // bad character
        (XsdSockmsgType::Read, b"/a.b\0"),           // bad character
        (XsdSockmsgType::Read, b"/\xff\0"),          // non-ASCII
        (XsdSockmsgType::Read, b"@releaseDomain\0"), // special not allowed here
        (XsdSockmsgType::Watch, b"/a\0"),            // no token
        (XsdSockmsgType::Watch, b"/a\0t\0x\0"),      // three strings
        (XsdSockmsgType::Watch, b"/a\0t"),           // unterminated token
        (XsdSockmsgType::TransactionEnd, b"X\0"),
        (XsdSockmsgType::TransactionEnd, b"T"),
        (XsdSockmsgType::TransactionEnd, b"TT\0"),
        (XsdSockmsgType::SetPerms, b"/tool\0"), // no permissions
        (XsdSockmsgType::SetPerms, b"/tool\0x0\0"),
        (XsdSockmsgType::SetPerms, b"/tool\0r\0"),
        (XsdSockmsgType::SetPerms, b"/tool\0r70000\0"),
        (XsdSockmsgType::SetPerms, b"/tool\0r1a\0"),
        (XsdSockmsgType::Introduce, b"5\0"),
        (XsdSockmsgType::Introduce, b"5\0abc\0"),
        (XsdSockmsgType::Introduce, b"5\x001\x000\0"), // port 0
        (XsdSockmsgType::Introduce, b"x\x001\x001\0"),
        (XsdSockmsgType::Release, b"99999\0"),
        (XsdSockmsgType::GetDomainPath, b"\0"),
        (XsdSockmsgType::GetDomainPath, b"-1\0"),
        (XsdSockmsgType::DirectoryPart, b"/\0"),
        (XsdSockmsgType::DirectoryPart, b"/\0x\0"),
        (XsdSockmsgType::Control, b""),
        (XsdSockmsgType::Control, b"bogus\0"),
    ];
    for (ty, payload) in cases {
        let r = t.raw(d0, *ty as u32, 0, payload);
        assert_eq!(as_result(*ty, &r), err(Errno::EINVAL), "{ty:?} {:?}", String::from_utf8_lossy(payload));
    }
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn path_length_limits() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    // Relative: at most 2048 characters (short components, so no node outgrows its size quota).
    let rel_ok = alloc::format!("data{}/xxx", "/xxxxxxxxx".repeat(204));
    let rel_long = alloc::format!("{rel_ok}y");
    assert_eq!(rel_ok.len(), 2048);
    assert_eq!(t.write(a, &rel_ok, ""), ok());
    assert_eq!(t.write(a, &rel_long, ""), err(Errno::EINVAL));
    // The same limit applies below /local/domain/<id>/ when written absolutely.
    let abs_long = alloc::format!("/local/domain/1/{rel_long}");
    assert_eq!(t.write(d0, &abs_long, ""), err(Errno::EINVAL));
    // Absolute paths elsewhere: at most 3072.
    let long3072 = alloc::format!("/{}", "y".repeat(3071));
    let long3073 = alloc::format!("/{}", "y".repeat(3072));
    assert_eq!(t.write(d0, &long3072, ""), ok());
    assert_eq!(t.write(d0, &long3073, ""), err(Errno::EINVAL));
    // A component-heavy path is fine too (no depth limit beyond length); removal is
    // iterative so it cannot exhaust the stack.
    let deep: String = (0..1000).map(|_| "/d").collect();
    assert_eq!(t.write(d0, &deep, "v"), ok());
    assert_eq!(t.rm(d0, "/d"), ok());
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn reply_too_big_is_e2big() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    for i in 0..200 {
        t.mkdir(d0, &alloc::format!("/big/child-with-a-long-name-{i:04}")).unwrap();
    }
    assert_eq!(t.dir(d0, "/big"), Err("E2BIG".into()));
    // DIRECTORY_PART pages through it.
    let mut names = Vec::new();
    let mut off = 0u32;
    let mut generation = None;
    loop {
        let r = t.call(d0, 0, &Request::DirectoryPart { path: "/big".into(), offset: off }).unwrap();
        assert!(r.len() <= PAYLOAD_MAX);
        let mut parts = split_strings(&r);
        let g = parts.remove(0);
        assert_eq!(*generation.get_or_insert(g.clone()), g, "stable generation");
        let done = parts.last().is_some_and(String::is_empty);
        if done {
            parts.pop();
        }
        off += parts.iter().map(|p| p.len() as u32 + 1).sum::<u32>();
        names.extend(parts);
        if done {
            break;
        }
    }
    assert_eq!(names.len(), 200);
    assert_eq!(names[0], "child-with-a-long-name-0000");
    assert_eq!(names[199], "child-with-a-long-name-0199");
}

// ---------------------------------------------------------------- store

#[test]
fn initial_tree() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    assert_eq!(t.dir(d0, "/"), Ok(strs(&["tool"])));
    assert_eq!(t.dir(d0, "/tool"), Ok(strs(&["xenstored"])));
    assert_eq!(t.get_perms(d0, "/"), Ok(strs(&["n0"])));
    assert_eq!(t.get_perms(d0, RELEASE_DOMAIN), Ok(strs(&["n0"])));
    assert_eq!(t.get_perms(d0, INTRODUCE_DOMAIN), Ok(strs(&["n0"])));
    assert_eq!(t.xs.store().owned_by(DomId::DOM0), 5);
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn write_read_mkdir_directory() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    assert_eq!(t.read(d0, "/a/b"), err(Errno::ENOENT));
    assert_eq!(t.write(d0, "/a/b/c", "hello"), ok());
    assert_eq!(t.read(d0, "/a/b/c"), val("hello"));
    assert_eq!(t.read(d0, "/a/b"), val(""), "missing parents are created empty");
    assert_eq!(t.write(d0, "/a/b/c", "bye"), ok());
    assert_eq!(t.read(d0, "/a/b/c"), val("bye"));
    assert_eq!(t.mkdir(d0, "/a/b/d"), ok());
    assert_eq!(t.mkdir(d0, "/a/b/d"), ok(), "mkdir of an existing node is fine");
    assert_eq!(t.write(d0, "/a/b/d", "v"), ok());
    assert_eq!(t.mkdir(d0, "/a/b/d"), ok());
    assert_eq!(t.read(d0, "/a/b/d"), val("v"), "mkdir keeps the value");
    assert_eq!(t.dir(d0, "/a/b"), Ok(strs(&["c", "d"])), "creation order");
    assert_eq!(t.dir(d0, "/a/b/c"), Ok(Vec::new()));
    assert_eq!(t.dir(d0, "/nope"), Err("ENOENT".into()));
    // Values are binary.
    let r = t.call(d0, 0, &Request::Write { path: "/bin".into(), value: b"a\0b\0".to_vec() });
    assert_eq!(r, ok());
    assert_eq!(t.read(d0, "/bin"), Ok(b"a\0b\0".to_vec()));
    assert_eq!(t.write(d0, "/empty", ""), ok());
    assert_eq!(t.read(d0, "/empty"), val(""));
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn rm_semantics() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    t.write(d0, "/a/b/c", "1").unwrap();
    t.write(d0, "/a/b/d/e", "2").unwrap();
    t.write(d0, "/a/x", "3").unwrap();
    let before = t.xs.store().owned_by(DomId::DOM0);
    assert_eq!(t.rm(d0, "/a/b"), ok());
    assert_eq!(t.read(d0, "/a/b/c"), err(Errno::ENOENT));
    assert_eq!(t.read(d0, "/a/b"), err(Errno::ENOENT));
    assert_eq!(t.dir(d0, "/a"), Ok(strs(&["x"])));
    assert_eq!(t.xs.store().owned_by(DomId::DOM0), before - 4);
    assert_eq!(t.rm(d0, "/a/b"), ok(), "removing a missing node whose parent exists");
    assert_eq!(t.rm(d0, "/a/b/c"), err(Errno::ENOENT), "parent missing too");
    assert_eq!(t.rm(d0, "/"), err(Errno::EINVAL));
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn perms_get_set_and_inheritance() {
    let (mut t, a, b) = two_guests();
    let d0 = t.dom0;
    assert_eq!(t.get_perms(d0, "/local/domain/1"), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.get_perms(d0, "/local/domain/1/data"), Ok(strs(&["n1"])));
    assert_eq!(t.get_perms(d0, "/local/domain/1/name"), Ok(strs(&["n0", "r1"])), "dom0 keeps the owner");
    assert_eq!(t.read(a, "name"), val("guest1"));

    // A domain creating nodes owns them and inherits the rest of the parent's list.
    t.set_perms(a, "data", Perms::owned_by(DomId(1), Access::NONE).with(DomId(2), Access::READ)).unwrap();
    assert_eq!(t.write(a, "data/x/y", "v"), ok());
    assert_eq!(t.get_perms(a, "data/x/y"), Ok(strs(&["n1", "r2"])));
    assert_eq!(t.read(b, "/local/domain/1/data/x/y"), val("v"));
    assert_eq!(t.write(b, "/local/domain/1/data/x/y", "no"), err(Errno::EACCES));

    // dom0 writing into a domain's subtree leaves the domain as owner.
    assert_eq!(t.write(d0, "/local/domain/1/data/fromdom0", "v"), ok());
    assert_eq!(t.get_perms(d0, "/local/domain/1/data/fromdom0"), Ok(strs(&["n1", "r2"])));

    // A domain writing into a node dom0 opened to it becomes owner of what it creates.
    t.write(d0, "/shared", "").unwrap();
    t.set_perms(d0, "/shared", Perms::owned_by(DomId::DOM0, Access::NONE).with(DomId(2), Access::BOTH))
        .unwrap();
    assert_eq!(t.write(b, "/shared/k", "v"), ok());
    assert_eq!(t.get_perms(d0, "/shared/k"), Ok(strs(&["n2", "b2"])));

    // Only the owner or dom0 may change permissions; nobody unprivileged may give a node away.
    assert_eq!(
        t.set_perms(b, "/local/domain/1/data/x", Perms::owned_by(DomId(2), Access::BOTH)),
        err(Errno::EACCES)
    );
    assert_eq!(t.set_perms(a, "data/x", Perms::owned_by(DomId(2), Access::BOTH)), err(Errno::EPERM));
    assert_eq!(t.set_perms(a, "data/x", Perms::owned_by(DomId(1), Access::READ)), ok());
    assert_eq!(t.read(b, "/local/domain/1/data/x"), val(""));
    assert_eq!(t.set_perms(d0, "/local/domain/1/data/x", Perms::owned_by(DomId(2), Access::NONE)), ok());
    assert_eq!(t.get_perms(b, "/local/domain/1/data/x"), Ok(strs(&["n2"])));
    assert_eq!(t.set_perms(d0, "/nowhere", Perms::owned_by(DomId(2), Access::NONE)), err(Errno::ENOENT));
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn relative_paths_and_domain_path() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    assert_eq!(t.write(a, "data/rel", "r"), ok());
    assert_eq!(t.read(d0, "/local/domain/1/data/rel"), val("r"));
    assert_eq!(t.read(d0, "tool"), err(Errno::ENOENT), "dom0's relative base is /local/domain/0");
    let gdp = |t: &mut Xs, c, d| t.call(c, 0, &Request::GetDomainPath { domid: d });
    assert_eq!(gdp(&mut t, a, 1), val("/local/domain/1\0"));
    assert_eq!(gdp(&mut t, a, 7), val("/local/domain/7\0"));
    assert_eq!(gdp(&mut t, d0, 0), val("/local/domain/0\0"));
}

// ---------------------------------------------------------------- permissions

#[test]
fn domu_cannot_write_outside_its_subtree() {
    let (mut t, a, _) = two_guests();
    assert_eq!(t.write(a, "/foo", "x"), err(Errno::EACCES));
    assert_eq!(t.mkdir(a, "/local/domain/2/data/x"), err(Errno::EACCES));
    assert_eq!(t.write(a, "/local/domain/2/data", "x"), err(Errno::EACCES));
    assert_eq!(t.rm(a, "/local/domain/2/data"), err(Errno::EACCES));
    assert_eq!(t.rm(a, "/tool"), err(Errno::EACCES));
    assert_eq!(t.rm(a, "/"), err(Errno::EACCES));
    // Its own read-only nodes, written by the toolstack, are off limits too.
    assert_eq!(t.write(a, "name", "evil"), err(Errno::EACCES));
    assert_eq!(t.write(a, "memory/target", "999999"), err(Errno::EACCES));
    assert_eq!(t.write(a, "newtop", "x"), err(Errno::EACCES), "/local/domain/1 itself is dom0's");
    // Where it may write.
    assert_eq!(t.write(a, "data/ok", "x"), ok());
    assert_eq!(t.write(a, "control/shutdown", ""), ok());
    assert_eq!(t.write(a, "device/vbd/768/state", "1"), ok());
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn domu_cannot_rewrite_its_backend() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    t.xs.add_device(&DeviceConfig {
        kind: "vbd".into(),
        devid: 51712,
        frontend: DomId(1),
        backend: DomId::DOM0,
        frontend_entries: alloc::vec![("virtual-device".into(), "51712".into())],
        frontend_ro_entries: Vec::new(),
        backend_entries: alloc::vec![("params".into(), "/dev/disk".into()), ("mode".into(), "w".into())],
    })
    .unwrap();
    let back = backend_path(DomId::DOM0, "vbd", DomId(1), 51712);
    let front = frontend_path(DomId(1), "vbd", 51712);
    assert_eq!(back, "/local/domain/0/backend/vbd/1/51712");
    assert_eq!(t.get_perms(d0, &back), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.get_perms(d0, &front), Ok(strs(&["n1", "r0"])));
    // The guest reads its backend...
    assert_eq!(t.read(a, &alloc::format!("{back}/params")), val("/dev/disk"));
    assert_eq!(t.read(a, &alloc::format!("{front}/backend")), Ok(back.clone().into_bytes()));
    // ...but cannot change it, add to it, or remove it.
    assert_eq!(t.write(a, &alloc::format!("{back}/params"), "/etc/shadow"), err(Errno::EACCES));
    assert_eq!(t.write(a, &alloc::format!("{back}/state"), "4"), err(Errno::EACCES));
    assert_eq!(t.write(a, &alloc::format!("{back}/new"), "x"), err(Errno::EACCES));
    assert_eq!(t.rm(a, &back), err(Errno::EACCES));
    assert_eq!(t.set_perms(a, &back, Perms::owned_by(DomId(1), Access::BOTH)), err(Errno::EACCES));
    // It drives its own frontend.
    assert_eq!(t.write(a, &alloc::format!("{front}/state"), "3"), ok());
    assert_eq!(t.write(a, &alloc::format!("{front}/ring-ref"), "8"), ok());
    // And the backend (dom0) sees it.
    assert_eq!(t.read(d0, &alloc::format!("{front}/ring-ref")), val("8"));
}

#[test]
fn domu_cannot_read_other_domains() {
    let (mut t, a, b) = two_guests();
    t.write(b, "data/secret", "s").unwrap();
    assert_eq!(t.read(a, "/local/domain/2/data/secret"), err(Errno::EACCES));
    assert_eq!(t.read(a, "/local/domain/2/name"), err(Errno::EACCES));
    assert_eq!(t.dir(a, "/local/domain/2"), Err("EACCES".into()));
    assert_eq!(t.get_perms(a, "/local/domain/2/data"), Err("EACCES".into()));
    // A missing node under an unreadable parent is EACCES too: existence does not leak.
    assert_eq!(t.read(a, "/local/domain/2/data/nothing"), err(Errno::EACCES));
    assert_eq!(t.read(a, "/nothing/at/all"), err(Errno::EACCES));
    // Under a readable parent the truth is told.
    assert_eq!(t.read(a, "data/nothing"), err(Errno::ENOENT));
    assert_eq!(t.read(a, "/local/domain/1/nothing"), err(Errno::ENOENT));
    // Root and /tool are dom0's.
    assert_eq!(t.dir(a, "/"), Err("EACCES".into()));
    assert_eq!(t.get_perms(a, RELEASE_DOMAIN), Err("EACCES".into()));
}

#[test]
fn dom0_can_do_everything() {
    let (mut t, _, b) = two_guests();
    let d0 = t.dom0;
    t.write(b, "data/mine", "m").unwrap();
    t.set_perms(b, "data/mine", Perms::owned_by(DomId(2), Access::NONE)).unwrap();
    assert_eq!(t.read(d0, "/local/domain/2/data/mine"), val("m"));
    assert_eq!(t.write(d0, "/local/domain/2/data/mine", "dom0"), ok());
    assert_eq!(t.set_perms(d0, "/local/domain/2/data/mine", Perms::owned_by(DomId(0), Access::NONE)), ok());
    assert_eq!(t.read(b, "data/mine"), err(Errno::EACCES));
    assert_eq!(t.rm(d0, "/local/domain/2/data"), ok());
    assert_eq!(t.dir(d0, "/"), Ok(strs(&["tool", "local"])));
    assert_eq!(t.get_perms(d0, RELEASE_DOMAIN), Ok(strs(&["n0"])));
    assert_eq!(t.call(d0, 0, &Request::Control { args: alloc::vec![b"check".to_vec()] }), ok());
}

#[test]
fn privileged_requests_refused_to_domus() {
    let (mut t, a, _) = two_guests();
    let reqs = [
        Request::Introduce { domid: DomId(5), gfn: 1, port: Port(1) },
        Request::Release { domid: DomId(2) },
        Request::Resume { domid: DomId(2) },
        Request::SetTarget { domid: DomId(1), target: DomId(2) },
        Request::IsDomainIntroduced { domid: DomId(2) },
        Request::Control { args: alloc::vec![b"check".to_vec()] },
    ];
    for r in &reqs {
        assert_eq!(t.call(a, 0, r), err(Errno::EACCES), "{r:?}");
    }
    assert!(t.xs.is_introduced(DomId(2)));
    assert!(!t.xs.is_introduced(DomId(5)));
    assert!(t.xs.take_actions().is_empty());
}

#[test]
fn set_target_grants_the_targets_rights() {
    let (mut t, a, b) = two_guests();
    let d0 = t.dom0;
    t.write(b, "data/x", "v").unwrap();
    assert_eq!(t.read(a, "/local/domain/2/data/x"), err(Errno::EACCES));
    assert_eq!(t.call(d0, 0, &Request::SetTarget { domid: DomId(1), target: DomId(2) }), ok());
    assert_eq!(t.read(a, "/local/domain/2/data/x"), val("v"));
    assert_eq!(t.write(a, "/local/domain/2/data/x", "w"), ok());
    assert_eq!(t.read(a, "/local/domain/2/name"), val("guest2"), "inherits r2 entries");
    assert_eq!(t.call(d0, 0, &Request::SetTarget { domid: DomId(1), target: DomId(9) }), err(Errno::ENOENT));
}

// ---------------------------------------------------------------- transactions

#[test]
fn transaction_isolation_commit_and_abort() {
    let (mut t, a, b) = two_guests();
    let tx = t.tx_start(a);
    assert_ne!(tx, 0);
    let w = |t: &mut Xs, tx, p: &str, v: &str| {
        t.call(a, tx, &Request::Write { path: p.into(), value: v.as_bytes().to_vec() })
    };
    let r = |t: &mut Xs, c, tx, p: &str| t.call(c, tx, &Request::Read { path: p.into() });
    assert_eq!(w(&mut t, tx, "data/t/x", "1"), ok());
    assert_eq!(r(&mut t, a, tx, "data/t/x"), val("1"), "own writes visible inside");
    assert_eq!(r(&mut t, a, 0, "data/t/x"), err(Errno::ENOENT), "invisible outside");
    assert_eq!(t.dir(a, "data"), Ok(Vec::new()));
    assert_eq!(t.tx_end(a, tx, true), ok());
    assert_eq!(r(&mut t, a, 0, "data/t/x"), val("1"));
    assert_eq!(t.tx_end(a, tx, true), err(Errno::ENOENT), "ended transactions are gone");

    let tx = t.tx_start(a);
    assert_eq!(w(&mut t, tx, "data/t/x", "2"), ok());
    assert_eq!(t.call(a, tx, &Request::Rm { path: "data/t".into() }), ok());
    assert_eq!(r(&mut t, a, tx, "data/t/x"), err(Errno::ENOENT));
    assert_eq!(t.tx_end(a, tx, false), ok());
    assert_eq!(r(&mut t, a, 0, "data/t/x"), val("1"), "abort discards");

    // Reads inside see a snapshot-consistent view, and transactions are per connection.
    let tx = t.tx_start(a);
    assert_eq!(r(&mut t, b, tx, "data"), err(Errno::ENOENT), "tx ids are per connection");
    assert_eq!(t.tx_end(a, tx, true), ok(), "read-only transaction commits");
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn transaction_conflicts_give_eagain() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    t.write(a, "data/x", "0").unwrap();
    let gen_before = t.xs.store().generation();

    // Read-then-concurrent-write.
    let tx = t.tx_start(a);
    assert_eq!(t.call(a, tx, &Request::Read { path: "data/x".into() }), val("0"));
    t.write(d0, "/local/domain/1/data/x", "1").unwrap();
    assert_eq!(t.call(a, tx, &Request::Write { path: "data/y".into(), value: b"t".to_vec() }), ok());
    assert_eq!(t.tx_end(a, tx, true), err(Errno::EAGAIN));
    assert_eq!(t.read(a, "data/y"), err(Errno::ENOENT), "nothing of a failed commit lands");
    assert_eq!(t.xs.transaction_count(a), 0);

    // Write-then-concurrent-write.
    let tx = t.tx_start(a);
    t.call(a, tx, &Request::Write { path: "data/x".into(), value: b"tx".to_vec() }).unwrap();
    t.write(a, "data/x", "outside").unwrap();
    assert_eq!(t.tx_end(a, tx, true), err(Errno::EAGAIN));
    assert_eq!(t.read(a, "data/x"), val("outside"));

    // Concurrent delete of a node read.
    let tx = t.tx_start(a);
    t.call(a, tx, &Request::Read { path: "data/x".into() }).unwrap();
    t.rm(a, "data/x").unwrap();
    assert_eq!(t.tx_end(a, tx, true), err(Errno::EAGAIN));

    // Concurrent creation of a node the transaction saw missing.
    let tx = t.tx_start(a);
    assert_eq!(t.call(a, tx, &Request::Read { path: "data/x".into() }), err(Errno::ENOENT));
    t.write(a, "data/x", "now").unwrap();
    t.call(a, tx, &Request::Write { path: "data/z".into(), value: Vec::new() }).unwrap();
    assert_eq!(t.tx_end(a, tx, true), err(Errno::EAGAIN));

    // Two transactions adding siblings conflict through the parent.
    let t1 = t.tx_start(a);
    let t2 = t.tx_start(a);
    t.call(a, t1, &Request::Write { path: "data/s1".into(), value: Vec::new() }).unwrap();
    t.call(a, t2, &Request::Write { path: "data/s2".into(), value: Vec::new() }).unwrap();
    assert_eq!(t.tx_end(a, t1, true), ok());
    assert_eq!(t.tx_end(a, t2, true), err(Errno::EAGAIN));
    assert_eq!(t.dir(a, "data"), Ok(strs(&["x", "s1"])));

    // Unrelated changes do not conflict.
    let tx = t.tx_start(a);
    t.call(a, tx, &Request::Write { path: "data/x".into(), value: b"mine".to_vec() }).unwrap();
    t.write(d0, "/elsewhere", "v").unwrap();
    assert_eq!(t.tx_end(a, tx, true), ok());
    assert_eq!(t.read(a, "data/x"), val("mine"));
    assert!(t.xs.store().generation() > gen_before);
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn transaction_protocol_errors() {
    let (mut t, a, _) = two_guests();
    assert_eq!(t.call(a, 0, &Request::TransactionEnd { commit: true }), err(Errno::ENOENT));
    assert_eq!(t.call(a, 42, &Request::Read { path: "data".into() }), err(Errno::ENOENT));
    let tx = t.tx_start(a);
    assert_eq!(t.call(a, tx, &Request::TransactionStart), err(Errno::EBUSY), "no nesting");
    // Watches ignore tx_id, even a bogus one.
    assert_eq!(t.call(a, 999, &Request::Watch { path: "data".into(), token: b"t".to_vec() }), ok());
    // Up to 10 per domain.
    let mut ids = alloc::vec![tx];
    for _ in 1..10 {
        ids.push(t.tx_start(a));
    }
    assert_eq!(t.call(a, 0, &Request::TransactionStart), err(Errno::ENOSPC));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "distinct ids");
    assert!(!ids.contains(&0));
    // RESET_WATCHES drops transactions too.
    assert_eq!(t.call(a, 0, &Request::ResetWatches), ok());
    assert_eq!(t.xs.transaction_count(a), 0);
    assert_eq!(t.xs.watch_count(a), 0);
}

#[test]
fn transaction_node_limit_and_commit_quota() {
    let q = Quotas { nodes_per_transaction: 8, nodes_per_domain: 40, ..Quotas::default() };
    let mut t = Xs::with_quotas(q);
    t.xs.create_domain_nodes(&domain_cfg(1)).unwrap();
    let a = t.introduce(1);
    let tx = t.tx_start(a);
    let mut last = ok();
    for i in 0..20 {
        last = t.call(a, tx, &Request::Write { path: alloc::format!("data/n{i}"), value: Vec::new() });
        if last.is_err() {
            break;
        }
    }
    assert_eq!(last, err(Errno::ENOSPC));
    assert_eq!(t.tx_end(a, tx, true), err(Errno::ENOSPC), "a failed transaction cannot commit");
    assert_eq!(t.dir(a, "data"), Ok(Vec::new()));

    // The node quota is checked again at commit against what landed meanwhile.
    let owned = t.xs.store().owned_by(DomId(1));
    let room = 40 - owned;
    let tx = t.tx_start(a);
    for i in 0..room.min(5) {
        t.call(a, tx, &Request::Write { path: alloc::format!("data/t{i}"), value: Vec::new() }).unwrap();
    }
    for i in 0..room - 1 {
        t.write(a, &alloc::format!("control/o{i}"), "").unwrap();
    }
    assert_eq!(t.tx_end(a, tx, true), err(Errno::ENOSPC));
    t.xs.store().check_invariants().unwrap();
}

// ---------------------------------------------------------------- watches

#[test]
fn watch_fires_once_immediately_then_on_changes() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    assert_eq!(t.watch(a, "data", "rel"), ok());
    assert_eq!(t.watch(a, "/local/domain/1/data", "abs"), ok());
    assert_eq!(t.events(a), [ev("data", "rel"), ev("/local/domain/1/data", "abs")]);
    t.write(a, "data/x", "1").unwrap();
    assert_eq!(t.events(a), [ev("data/x", "rel"), ev("/local/domain/1/data/x", "abs")]);
    t.write(d0, "/local/domain/1/data/x/y/z", "1").unwrap();
    assert_eq!(t.events(a), [ev("data/x/y/z", "rel"), ev("/local/domain/1/data/x/y/z", "abs")]);
    // Outside the watched subtree: nothing; the prefix must end at a component boundary.
    t.write(a, "device/x", "1").unwrap();
    t.write(d0, "/local/domain/1/database", "1").unwrap();
    assert_eq!(t.events(a), []);
    // mkdir of an existing node changes nothing.
    t.mkdir(a, "data/x").unwrap();
    assert_eq!(t.events(a), []);
    // Permission changes fire.
    t.set_perms(a, "data/x", Perms::owned_by(DomId(1), Access::READ)).unwrap();
    assert_eq!(t.events(a), [ev("data/x", "rel"), ev("/local/domain/1/data/x", "abs")]);
    assert_eq!(t.watch(a, "data", "rel"), err(Errno::EEXIST));
    assert_eq!(t.call(a, 0, &Request::Unwatch { path: "data".into(), token: b"rel".to_vec() }), ok());
    assert_eq!(
        t.call(a, 0, &Request::Unwatch { path: "data".into(), token: b"rel".to_vec() }),
        err(Errno::ENOENT)
    );
    t.write(a, "data/x", "2").unwrap();
    assert_eq!(t.events(a), [ev("/local/domain/1/data/x", "abs")]);
    assert_eq!(t.call(a, 0, &Request::ResetWatches), ok());
    t.write(a, "data/x", "3").unwrap();
    assert_eq!(t.events(a), []);
}

#[test]
fn watch_on_missing_node_and_rm_of_parent() {
    let (mut t, a, _) = two_guests();
    t.write(a, "data/p/c1/g", "1").unwrap();
    t.write(a, "data/p/c2", "2").unwrap();
    t.watch(a, "data/p/c1/g", "g").unwrap();
    t.watch(a, "data/p/c2", "c2").unwrap();
    t.watch(a, "data/new", "new").unwrap();
    t.watch(a, "data", "top").unwrap();
    t.events(a);
    // Creation of a watched missing node fires.
    t.write(a, "data/new", "").unwrap();
    assert_eq!(t.events(a), [ev("data/new", "new"), ev("data/new", "top")]);
    // Removing an ancestor reaches watches on removed descendants, children first.
    t.rm(a, "data/p").unwrap();
    let evs = t.events(a);
    assert_eq!(evs, [ev("data/p/c1/g", "g"), ev("data/p/c2", "c2"), ev("data/p", "top")]);
}

#[test]
fn watches_respect_read_permission() {
    let (mut t, a, b) = two_guests();
    let d0 = t.dom0;
    t.watch(a, "/", "all").unwrap();
    t.watch(b, "/local/domain/1", "spy").unwrap();
    assert_eq!(t.events(a), [ev("/", "all")]);
    assert_eq!(t.events(b), [ev("/local/domain/1", "spy")], "the initial firing is unconditional");
    t.write(b, "data/private", "x").unwrap();
    t.write(a, "data/mine", "x").unwrap();
    t.write(d0, "/tool/secret", "x").unwrap();
    assert_eq!(t.events(a), [ev("/local/domain/1/data/mine", "all")]);
    assert_eq!(t.events(b), [], "domain 2 cannot read domain 1's nodes");
    // Granting read makes events flow; removing a readable node is still reported.
    t.set_perms(a, "data", Perms::owned_by(DomId(1), Access::NONE).with(DomId(2), Access::READ)).unwrap();
    assert_eq!(t.events(b), [ev("/local/domain/1/data", "spy")]);
    t.write(a, "data/mine", "y").unwrap();
    assert_eq!(t.events(b), [ev("/local/domain/1/data/mine", "spy")]);
    t.set_perms(a, "data", Perms::owned_by(DomId(1), Access::NONE)).unwrap();
    assert_eq!(
        t.events(b),
        [ev("/local/domain/1/data", "spy")],
        "old permissions count for the change itself"
    );
    t.write(a, "data/mine", "z").unwrap();
    assert_eq!(t.events(b), []);
}

#[test]
fn special_watches() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    t.xs.create_domain_nodes(&domain_cfg(1)).unwrap();
    t.watch(d0, INTRODUCE_DOMAIN, "i").unwrap();
    t.watch(d0, RELEASE_DOMAIN, "r").unwrap();
    assert_eq!(t.events(d0), [ev(INTRODUCE_DOMAIN, "i"), ev(RELEASE_DOMAIN, "r")]);
    let a = t.introduce(1);
    assert_eq!(t.events(d0), [ev(INTRODUCE_DOMAIN, "i")]);
    t.watch(a, RELEASE_DOMAIN, "mine").unwrap();
    assert_eq!(t.events(a), [ev(RELEASE_DOMAIN, "mine")]);
    t.xs.create_domain_nodes(&domain_cfg(2)).unwrap();
    t.introduce(2);
    assert_eq!(t.events(d0), [ev(INTRODUCE_DOMAIN, "i")]);
    t.call(d0, 0, &Request::Release { domid: DomId(2) }).unwrap();
    assert_eq!(t.events(d0), [ev(RELEASE_DOMAIN, "r")]);
    assert_eq!(t.events(a), [], "domain 1 may not see @releaseDomain by default");
    t.set_perms(d0, RELEASE_DOMAIN, Perms::owned_by(DomId::DOM0, Access::NONE).with(DomId(1), Access::READ))
        .unwrap();
    assert_eq!(t.events(a), [ev(RELEASE_DOMAIN, "mine")], "the permission change itself is an event");
    assert_eq!(t.events(d0), [ev(RELEASE_DOMAIN, "r")]);
    t.xs.notify_domain_shutdown();
    assert_eq!(t.events(a), [ev(RELEASE_DOMAIN, "mine")]);
    // Re-introducing an existing domain does not fire @introduceDomain.
    t.introduce(1);
    assert_eq!(t.events(d0), [ev(RELEASE_DOMAIN, "r")]);
}

/// The toolstack's grant (dom0's `release-watch=`): a domU that may read `@releaseDomain`
/// hears every release and nothing more; another domU still hears none; the grant goes
/// with the watcher.
#[test]
fn release_watch_grant() {
    let (mut t, a, b) = two_guests();
    t.watch(a, RELEASE_DOMAIN, "rel").unwrap();
    t.watch(b, RELEASE_DOMAIN, "rel").unwrap();
    t.events(a);
    t.events(b);
    t.xs.grant_release_watch(DomId(1)).unwrap();
    t.xs.grant_release_watch(DomId(1)).unwrap();
    assert_eq!(t.get_perms(t.dom0, RELEASE_DOMAIN), Ok(strs(&["n0", "r1"])), "granted once");
    t.events(a);
    assert_eq!(t.events(b), []);
    t.xs.create_domain_nodes(&domain_cfg(3)).unwrap();
    t.introduce(3);
    assert_eq!(t.events(a), [], "an introduction is not a release");
    t.xs.release_domain(DomId(3)).unwrap();
    assert_eq!(t.events(a), [ev(RELEASE_DOMAIN, "rel")]);
    assert_eq!(t.events(b), [], "domain 2 was not granted @releaseDomain");
    // Reading a released domain's directory still tells domain 1 nothing (EACCES either
    // way, as under Xen: /local/domain is not readable by domUs).
    assert_eq!(t.read(a, "/local/domain/2/name"), err(Errno::EACCES));
    t.xs.remove_domain_nodes(DomId(3)).unwrap();
    assert_eq!(t.read(a, "/local/domain/3"), err(Errno::EACCES));
    t.xs.release_domain(DomId(1)).unwrap();
    assert_eq!(t.get_perms(t.dom0, RELEASE_DOMAIN), Ok(strs(&["n0"])), "the grant goes with domain 1");
}

#[test]
fn transaction_commit_fires_watches() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    t.write(a, "data/old/c", "1").unwrap();
    t.watch(d0, "/local/domain/1/data", "w").unwrap();
    t.events(d0);
    let tx = t.tx_start(a);
    t.call(a, tx, &Request::Write { path: "data/x".into(), value: b"1".to_vec() }).unwrap();
    t.call(a, tx, &Request::Write { path: "data/x".into(), value: b"2".to_vec() }).unwrap();
    t.call(a, tx, &Request::Rm { path: "data/old".into() }).unwrap();
    assert_eq!(t.events(d0), [], "nothing before commit");
    t.tx_end(a, tx, true).unwrap();
    let mut evs = t.events(d0);
    evs.sort();
    assert_eq!(evs, [ev("/local/domain/1/data/old", "w"), ev("/local/domain/1/data/x", "w")]);
    // Aborted and failed transactions fire nothing.
    let tx = t.tx_start(a);
    t.call(a, tx, &Request::Write { path: "data/y".into(), value: Vec::new() }).unwrap();
    t.tx_end(a, tx, false).unwrap();
    assert_eq!(t.events(d0), []);
}

#[test]
fn watch_quota_is_e2big() {
    let (mut t, a, _) = two_guests();
    for i in 0..128 {
        assert_eq!(t.watch(a, "data", &alloc::format!("t{i}")), ok());
    }
    assert_eq!(t.watch(a, "data", "one-more"), err(Errno::E2BIG));
    assert_eq!(t.xs.watch_count(a), 128);
}

#[test]
fn watch_storm_is_bounded_by_dropping_events() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    let budget = t.xs.quotas().event_queue_bytes;
    t.watch(a, "/local/domain/1", "storm").unwrap();
    t.events(a);
    // The guest never reads its ring; dom0 keeps writing.
    for i in 0..5000 {
        t.write(d0, &alloc::format!("/local/domain/1/data/n{i}"), "x").unwrap();
        assert!(t.xs.pending_output(a) <= budget);
    }
    assert!(t.xs.dropped_events(a) > 0);
    // Identical pending events are merged rather than queued twice.
    let before = t.xs.pending_output(a);
    let (mut t2, a2, _) = two_guests();
    t2.watch(a2, "data", "w").unwrap();
    t2.events(a2);
    for _ in 0..100 {
        t2.write(t2.dom0, "/local/domain/1/data/same", "x").unwrap();
    }
    assert_eq!(t2.events(a2), [ev("data/same", "w")]);
    assert!(before <= budget);
    // The connection still works once it reads.
    assert!(!t.events(a).is_empty());
    assert_eq!(t.read(a, "data/n0"), val("x"));
}

#[test]
fn unread_replies_stop_input() {
    let (mut t, a, _) = two_guests();
    let mut stream = Vec::new();
    for i in 0..30u32 {
        stream.extend(Message::new(2, i, 0, b"name\0".to_vec()).unwrap().encode());
    }
    let taken = t.xs.feed(a, &stream).unwrap();
    let one = stream.len() / 30;
    assert_eq!(taken, 20 * one, "stops after 20 unread replies");
    assert_eq!(t.xs.feed(a, &stream[taken..]), Ok(0));
    let reply_len = HEADER_LEN + "guest1".len();
    let mut buf = alloc::vec![0u8; reply_len * 5];
    assert_eq!(t.xs.read_output(a, &mut buf), buf.len());
    let more = t.xs.feed(a, &stream[taken..]).unwrap();
    assert_eq!(more, 5 * one);
    // Partial reads of output are fine.
    let mut all = Vec::new();
    let mut small = [0u8; 7];
    loop {
        let n = t.xs.read_output(a, &mut small);
        if n == 0 {
            break;
        }
        all.extend_from_slice(&small[..n]);
    }
    let msgs = decode_all(&all);
    assert_eq!(msgs.len(), 20);
    assert!(msgs.iter().all(|m| m.payload == b"guest1"));
}

// ---------------------------------------------------------------- quotas

#[test]
fn node_quota_is_enospc() {
    let q = Quotas { nodes_per_domain: 50, ..Quotas::default() };
    let mut t = Xs::with_quotas(q);
    t.xs.create_domain_nodes(&domain_cfg(1)).unwrap();
    let a = t.introduce(1);
    let owned = t.xs.store().owned_by(DomId(1));
    let mut made = 0;
    loop {
        match t.write(a, &alloc::format!("data/n{made}"), "") {
            Ok(_) => made += 1,
            Err(e) => {
                assert_eq!(e, "ENOSPC");
                break;
            }
        }
    }
    assert_eq!(owned + made, 50);
    assert_eq!(t.xs.store().owned_by(DomId(1)), 50);
    // Multi-level creation needing more than what is left fails whole.
    t.rm(a, "data/n0").unwrap();
    assert_eq!(t.write(a, "data/deep/er", ""), err(Errno::ENOSPC));
    assert_eq!(t.read(a, "data/deep"), err(Errno::ENOENT));
    assert_eq!(t.write(a, "data/one", ""), ok());
    // dom0 is not limited, even when creating nodes the domain owns.
    let d0 = t.dom0;
    assert_eq!(t.write(d0, "/local/domain/1/data/bydom0", ""), ok());
    assert_eq!(t.xs.store().owned_by(DomId(1)), 51);
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn node_size_and_perm_count_quotas() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    // 16 + 8 (one permission) + value must stay within 2048.
    let fits = "v".repeat(2048 - 24);
    let too_big = "v".repeat(2048 - 23);
    assert_eq!(t.write(a, "data/v", &fits), ok());
    assert_eq!(t.write(a, "data/v", &too_big), err(Errno::ENOSPC));
    assert_eq!(t.write(a, "data/w", &too_big), err(Errno::ENOSPC));
    assert_eq!(t.read(a, "data/w"), err(Errno::ENOENT));
    assert_eq!(t.read(a, "data/v"), Ok(fits.into_bytes()));
    assert_eq!(t.write(d0, "/local/domain/1/data/v", &"v".repeat(4000)), ok(), "dom0 is exempt");
    // At most 5 permission entries for a domain.
    let mut p = Perms::owned_by(DomId(1), Access::NONE);
    for d in 2..6 {
        p = p.with(DomId(d), Access::READ);
    }
    // The permission list counts towards the node size.
    assert_eq!(t.set_perms(a, "data/v", p.clone()), err(Errno::ENOSPC));
    assert_eq!(t.write(a, "data/p", ""), ok());
    assert_eq!(t.set_perms(a, "data/p", p.clone()), ok());
    assert_eq!(t.set_perms(a, "data/p", p.clone().with(DomId(9), Access::READ)), err(Errno::ENOSPC));
    assert_eq!(t.set_perms(d0, "/local/domain/1/data/p", p.with(DomId(9), Access::READ)), ok());
}

// ---------------------------------------------------------------- domains

#[test]
fn introduce_and_release() {
    let mut t = Xs::new();
    let d0 = t.dom0;
    let isin = |t: &mut Xs, d: u16| t.call(d0, 0, &Request::IsDomainIntroduced { domid: DomId(d) });
    assert_eq!(isin(&mut t, 3), val("F\0"));
    assert_eq!(isin(&mut t, 0), val("T\0"));
    assert_eq!(isin(&mut t, DomId::SELF.0), val("T\0"));
    t.xs.create_domain_nodes(&domain_cfg(3)).unwrap();
    let c = t.introduce(3);
    assert_eq!(isin(&mut t, 3), val("T\0"));
    assert_eq!(
        t.xs.take_actions(),
        [Action::Introduce { domid: DomId(3), conn: c, gfn: 0x1234, port: Port(7), reset: false }]
    );
    assert_eq!(t.xs.caller(c), Some(Caller::domu(DomId(3))));
    // Again: the same connection, reset.
    t.write(c, "data/x", "1").unwrap();
    t.watch(c, "data", "w").unwrap();
    assert_eq!(t.call(d0, 0, &Request::Introduce { domid: DomId(3), gfn: 9, port: Port(8) }), ok());
    assert_eq!(
        t.xs.take_actions(),
        [Action::Introduce { domid: DomId(3), conn: c, gfn: 9, port: Port(8), reset: true }]
    );
    assert_eq!(t.xs.watch_count(c), 0);
    assert_eq!(t.xs.pending_output(c), 0);
    assert_eq!(t.read(c, "data/x"), val("1"));
    // The direct form behaves the same.
    assert_eq!(t.xs.introduce_domain(DomId(3), 9, Port(0)), Err(Errno::EINVAL));
    assert_eq!(t.xs.introduce_domain(DomId(3), 9, Port(8)), Ok(c));
    assert_eq!(
        t.xs.take_actions(),
        [Action::Introduce { domid: DomId(3), conn: c, gfn: 9, port: Port(8), reset: true }]
    );
    // Bad introductions.
    let intro =
        |t: &mut Xs, d: u16| t.call(d0, 0, &Request::Introduce { domid: DomId(d), gfn: 1, port: Port(1) });
    assert_eq!(intro(&mut t, 0), err(Errno::EINVAL));
    assert_eq!(intro(&mut t, DomId::SELF.0), err(Errno::EINVAL));
    // Release: owned nodes go, permissions naming the domain go, @releaseDomain fires.
    t.write(d0, "/shared/x", "v").unwrap();
    t.set_perms(d0, "/shared/x", Perms::owned_by(DomId::DOM0, Access::NONE).with(DomId(3), Access::BOTH))
        .unwrap();
    t.watch(d0, "/local/domain/3", "dom3").unwrap();
    t.events(d0);
    assert_eq!(t.call(d0, 0, &Request::Release { domid: DomId(3) }), ok());
    assert_eq!(t.xs.take_actions(), [Action::Release { domid: DomId(3), conn: c }]);
    assert_eq!(t.xs.domain_conn(DomId(3)), None);
    assert_eq!(t.xs.store().owned_by(DomId(3)), 0);
    assert_eq!(t.get_perms(d0, "/shared/x"), Ok(strs(&["n0"])));
    assert_eq!(t.read(d0, "/local/domain/3/name"), val("guest3"), "dom0-owned nodes stay");
    assert_eq!(t.read(d0, "/local/domain/3/data"), err(Errno::ENOENT));
    assert!(t.events(d0).contains(&ev("/local/domain/3/data", "dom3")));
    assert_eq!(isin(&mut t, 3), val("F\0"));
    assert_eq!(t.call(d0, 0, &Request::Release { domid: DomId(3) }), err(Errno::ENOENT));
    assert_eq!(t.call(d0, 0, &Request::Release { domid: DomId(0) }), err(Errno::EINVAL));
    assert_eq!(t.call(d0, 0, &Request::Resume { domid: DomId(3) }), err(Errno::ENOENT));
    assert_eq!(t.xs.feed(c, b"x"), Err(FeedError::NoConnection));
    // The toolstack then cleans up the rest.
    t.xs.remove_domain_nodes(DomId(3)).unwrap();
    assert_eq!(t.read(d0, "/local/domain/3"), err(Errno::ENOENT));
    assert_eq!(t.read(d0, "/local/domain/0/backend/console/3"), err(Errno::ENOENT));
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn toolstack_domain_nodes() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    let dom = "/local/domain/1";
    assert_eq!(t.read(a, "domid"), val("1"));
    assert_eq!(t.read(a, "memory/target"), val("65536"));
    // One availability node per vCPU, as libxl writes them; the guest reads but cannot
    // take a vCPU offline (or invent one) by writing them.
    assert_eq!(t.read(a, "cpu/0/availability"), val("online"));
    assert_eq!(t.read(a, "cpu/1/availability"), val("online"));
    assert_eq!(t.read(a, "cpu/2/availability"), err(Errno::ENOENT));
    assert_eq!(t.write(a, "cpu/0/availability", "offline"), err(Errno::EACCES));
    assert_eq!(t.write(a, "cpu/2/availability", "online"), err(Errno::EACCES));
    assert_eq!(t.get_perms(d0, &alloc::format!("{dom}/cpu/1/availability")), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.read(a, "store/ring-ref"), val("256"));
    assert_eq!(t.read(a, "store/port"), val("1"));
    assert_eq!(t.read(a, "console/ring-ref"), val("257"));
    assert_eq!(t.read(a, "console/port"), val("2"));
    assert_eq!(t.read(a, "console/type"), val("xenconsoled"));
    assert_eq!(t.read(a, "console/limit"), val("1048576"));
    assert_eq!(t.get_perms(d0, &alloc::format!("{dom}/console")), Ok(strs(&["n1", "r0"])));
    assert_eq!(t.get_perms(d0, &alloc::format!("{dom}/console/type")), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.write(a, "console/type", "ioemu"), err(Errno::EACCES));
    assert_eq!(t.get_perms(d0, &alloc::format!("{dom}/control")), Ok(strs(&["n1"])));
    assert_eq!(t.get_perms(d0, &alloc::format!("{dom}/memory")), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.read(d0, "/local/domain/0/backend/console/1/0/frontend"), val("/local/domain/1/console"));
    assert_eq!(t.get_perms(d0, "/local/domain/0/backend/console/1/0"), Ok(strs(&["n0", "r1"])));
    assert_eq!(t.read(a, "/local/domain/0/backend/console/1/0/state"), val("1"));
    assert_eq!(t.dir(a, "/local/domain/0/backend/console"), Err("EACCES".into()));
    // Recreating the nodes replaces the old ones.
    t.write(d0, "/local/domain/1/stale", "x").unwrap();
    t.xs.create_domain_nodes(&domain_cfg(1)).unwrap();
    assert_eq!(t.read(d0, "/local/domain/1/stale"), err(Errno::ENOENT));
    t.xs.remove_device("console", DomId(1), DomId::DOM0, 0).unwrap();
    t.xs.store().check_invariants().unwrap();
}

#[test]
fn execute_is_the_store_api_only() {
    let mut t = Xs::new();
    assert_eq!(
        t.xs.execute(Caller::DOM0, Request::Write { path: "/x".into(), value: b"1".to_vec() }),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(t.xs.execute(Caller::DOM0, Request::Read { path: "/x".into() }), Ok(b"1".to_vec()));
    assert_eq!(t.xs.execute(Caller::DOM0, Request::TransactionStart), Err(Errno::EINVAL));
    assert_eq!(t.xs.execute(Caller::domu(DomId(4)), Request::Read { path: "/x".into() }), Err(Errno::EACCES));
}

#[test]
fn errno_names_on_the_wire() {
    assert_eq!(error_name(Errno::E2BIG), "E2BIG");
    assert_eq!(error_name(Errno::ENOSPC), "ENOSPC");
    assert_eq!(error_name(Errno::EPERM), "EPERM");
    assert_eq!(error_name(Errno::EFAULT), "EINVAL", "untranslatable errors become EINVAL");
}

#[test]
fn transaction_memory_is_bounded() {
    let q = Quotas { transaction_bytes: 8 * 1024, ..Quotas::default() };
    let mut t = Xs::with_quotas(q);
    t.xs.create_domain_nodes(&domain_cfg(1)).unwrap();
    let a = t.introduce(1);
    let tx = t.tx_start(a);
    let big = "v".repeat(1500);
    let mut outcome = ok();
    for i in 0..20 {
        outcome = t.call(
            a,
            tx,
            &Request::Write { path: alloc::format!("data/{i}"), value: big.clone().into_bytes() },
        );
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, err(Errno::ENOMEM));
    assert_eq!(
        t.call(a, tx, &Request::Read { path: "data".into() }),
        err(Errno::ENOMEM),
        "the transaction is dead"
    );
    assert_eq!(t.tx_end(a, tx, true), err(Errno::ENOMEM));
    assert_eq!(t.dir(a, "data"), Ok(Vec::new()));
    // Rewriting one node over and over is charged too, so it cannot grow without bound.
    let tx = t.tx_start(a);
    let mut outcome = ok();
    for _ in 0..20 {
        outcome = t.call(a, tx, &Request::Write { path: "data/x".into(), value: big.clone().into_bytes() });
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, err(Errno::ENOMEM));
    assert_eq!(t.tx_end(a, tx, false), ok(), "aborting a failed transaction is fine");
}

#[test]
fn duplicate_events_merge_only_while_unsent() {
    let (mut t, a, _) = two_guests();
    let d0 = t.dom0;
    t.watch(a, "data", "w").unwrap();
    t.events(a);
    t.write(d0, "/local/domain/1/data/k", "1").unwrap();
    t.write(d0, "/local/domain/1/data/k", "2").unwrap();
    let mut first = [0u8; 1];
    assert_eq!(t.xs.read_output(a, &mut first), 1);
    t.write(d0, "/local/domain/1/data/k", "3").unwrap();
    let mut rest = alloc::vec![0u8; t.xs.pending_output(a)];
    t.xs.read_output(a, &mut rest);
    let mut all = first.to_vec();
    all.extend(rest);
    let evs: Vec<_> = decode_all(&all).iter().map(event_of).collect();
    assert_eq!(evs, [ev("data/k", "w"), ev("data/k", "w")], "a started event is not merged into");
}
