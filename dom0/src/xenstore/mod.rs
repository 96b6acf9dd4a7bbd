//! xenstored's core: the wire protocol, the node store with Xen's permissions and quotas,
//! transactions, watches and the per-domain connections, as a pure library the dom0 kernel
//! drives and the host tests exercise.
//!
//! How the dom0 binary uses it:
//! * Bytes read from a domain's request ring go to [`Xenstore::feed`], which decodes whole
//!   messages, answers them and returns how many bytes it took (it stops taking bytes while a
//!   connection has too many unread replies, leaving them in the ring as back-pressure).
//! * [`Xenstore::pending_output`] / [`Xenstore::read_output`] give the bytes to copy into the
//!   connection's response ring (replies and watch events, in order).
//! * [`Xenstore::take_actions`] says which rings to map and event channels to bind
//!   (INTRODUCE), which to tear down (RELEASE), and which connections broke the protocol
//!   (write the code into the ring's `error` field).
//! * dom0's own code talks to the store through a local connection
//!   ([`Xenstore::connect_local`]) or directly with [`Xenstore::execute`] and the toolstack
//!   helpers in [`toolstack`].
//!
//! Watch-event policy under a storm (xenstored's): identical events already queued and not yet
//! started are not queued twice, and an event that would push a connection's queued output
//! past its byte budget ([`Quotas::event_queue_bytes`]) is dropped and counted
//! ([`Xenstore::dropped_events`]); the connection stays up. Replies are never dropped: a
//! connection with [`Quotas::outstanding`] unread replies simply stops being read.

mod ops;
pub mod path;
pub mod perms;
pub mod request;
pub mod store;
pub mod toolstack;
pub mod wire;

#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hypercall_abi::io::xs_wire;
use hypercall_abi::{DomId, Errno, Port};

pub use hypercall_abi::io::xs_wire::{XsdSockmsg, XsdSockmsgType};
pub use perms::{Access, Caller, PermEntry, Perms};
pub use request::Request;
pub use store::{Node, Store, Transaction};
pub use wire::{Decoder, Message, StreamError};

use path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN, ROOT};
use store::{Change, Global, InTx, View};

/// Limits, with xenstored's defaults. Unprivileged domains hit the Xen-documented numbers;
/// dom0 is exempt in xenstored, but here it still gets generous bounds so no client can make
/// the daemon allocate without limit.
///
/// The count limits alone let one domain make xenstored hold megabytes (1000 nodes of 2 KiB
/// under 3 KiB paths, 10 transactions of 256 KiB). What bounds the heap is
/// [`memory_per_domain`](Self::memory_per_domain), cxenstored's `memory` quota: every byte a
/// domain makes xenstored keep — its nodes (path, value, permissions, child names, per-node
/// overhead), watches, open transactions, queued output and partial input — is charged to it,
/// and a request that would go past it gets `ENOMEM`. [`Quotas::fitting`] sizes it so that
/// every domain at its limit still fits the memory dom0 gives xenstored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`ENOSPC` beyond).
    pub nodes_per_domain: u32,
    /// Bytes charged per node: 16 + 8 per permission + value + child names (`ENOSPC`).
    pub node_size: usize,
    /// Entries in one permission list (`ENOSPC`).
    pub perms_per_node: usize,
    /// Watches per connection (`E2BIG`, xenstored's answer).
    pub watches: usize,
    /// Open transactions per connection (`ENOSPC`).
    pub transactions: usize,
    /// Distinct nodes one transaction may touch (`ENOSPC`).
    pub nodes_per_transaction: usize,
    /// Bytes of node copies one transaction may hold (`ENOMEM`): with `transactions` this
    /// bounds what a guest's open transactions cost dom0.
    pub transaction_bytes: usize,
    /// Unread replies after which a connection's requests are left in its ring.
    pub outstanding: usize,
    /// Queued output bytes beyond which watch events are dropped.
    pub event_queue_bytes: usize,
    /// `watches` for privileged connections.
    pub privileged_watches: usize,
    /// `transactions` for privileged connections.
    pub privileged_transactions: usize,
    /// `transaction_bytes` for privileged connections.
    pub privileged_transaction_bytes: usize,
    /// `outstanding` for privileged connections.
    pub privileged_outstanding: usize,
    /// `event_queue_bytes` for privileged connections.
    pub privileged_event_queue_bytes: usize,
    /// Heap bytes everything of one unprivileged domain may hold (`ENOMEM` beyond).
    pub memory_per_domain: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes_per_domain: 1000,
            node_size: 2048,
            perms_per_node: 5,
            watches: 128,
            transactions: 10,
            nodes_per_transaction: 1024,
            transaction_bytes: 256 * 1024,
            outstanding: 20,
            event_queue_bytes: 64 * 1024,
            privileged_watches: 4096,
            privileged_transactions: 256,
            privileged_transaction_bytes: 16 * 1024 * 1024,
            privileged_outstanding: 256,
            privileged_event_queue_bytes: 1024 * 1024,
            // cxenstored's hard `memory` quota.
            memory_per_domain: 2 * 1024 * 1024 + 512 * 1024,
        }
    }
}

impl Quotas {
    /// xenstored's defaults, with the memory quota lowered (never raised) so that `domains`
    /// unprivileged domains at their limit hold at most `budget` bytes together.
    pub fn fitting(budget: usize, domains: usize) -> Quotas {
        let d = Quotas::default();
        let share = budget / domains.max(1);
        Quotas { memory_per_domain: d.memory_per_domain.min(share), ..d }
    }
}

/// Names a connection (a domain's ring, or a local client inside dom0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

/// Work for the dom0 binary that the store cannot do itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// INTRODUCE: map the domain's xenstore page (`gfn`, or its reserved grant entry), bind an
    /// interdomain event channel to its `port`, and pump `conn`. With `reset`, the domain was
    /// already introduced: rebind to the new port and zero the ring indexes (xenstored's
    /// reconnect), as all of the connection's state has been dropped.
    Introduce { domid: DomId, conn: ConnId, gfn: u64, port: Port, reset: bool },
    /// RELEASE (or [`Xenstore::release_domain`]): unmap the page, close the event channel.
    Release { domid: DomId, conn: ConnId },
    /// The connection broke the protocol and is ignored from now on: store `ring_error` in
    /// the ring's `error` field and stop reading it.
    ConnectionBroken { conn: ConnId, domid: DomId, ring_error: u32 },
}

/// What [`Xenstore::feed_some`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes taken (the rest stays in the ring).
    pub taken: usize,
    /// Whole messages handled.
    pub messages: usize,
}

/// Why [`Xenstore::feed`] took no more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedError {
    /// No such connection.
    NoConnection,
    /// The connection's byte stream is corrupt; it is ignored from now on.
    Protocol(StreamError),
}

/// Heap bytes of a watch beyond its path and token.
const WATCH_OVERHEAD: usize = 96;
/// Heap bytes of an open transaction beyond what it charges itself.
const TX_OVERHEAD: usize = 512;
/// Heap bytes of a queued message beyond its bytes.
const OUT_OVERHEAD: usize = 64;

#[derive(Clone, Debug)]
struct Watch {
    /// Canonical path.
    path: String,
    token: Vec<u8>,
    /// Registered with a relative path: events are reported relative too.
    relative: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutKind {
    Reply,
    Event,
}

#[derive(Debug)]
struct OutMsg {
    bytes: Vec<u8>,
    sent: usize,
    kind: OutKind,
}

#[derive(Debug)]
struct Conn {
    caller: Caller,
    decoder: Decoder,
    out: VecDeque<OutMsg>,
    /// Bytes queued and not yet read out.
    out_bytes: usize,
    /// Replies queued and not completely read out.
    replies: usize,
    /// Encoded watch events queued and not started, for merging duplicates.
    unsent_events: BTreeSet<Vec<u8>>,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Transaction>,
    next_tx: u32,
    broken: Option<StreamError>,
    dropped_events: u64,
}

impl Conn {
    fn new(caller: Caller) -> Conn {
        Conn {
            caller,
            decoder: Decoder::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            replies: 0,
            unsent_events: BTreeSet::new(),
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            broken: None,
            dropped_events: 0,
        }
    }

    /// Forgets everything a domain set up (watches, transactions, queued output, partial
    /// input): what xenstored does when a connection is reset or ignored.
    fn reset(&mut self) {
        self.decoder.reset();
        self.out.clear();
        self.out_bytes = 0;
        self.replies = 0;
        self.unsent_events.clear();
        self.watches.clear();
        self.txs.clear();
        self.broken = None;
    }

    /// The heap bytes the connection holds: watches, open transactions, queued output (with
    /// the copies kept for merging events) and a partial request.
    fn mem_size(&self) -> usize {
        let watches: usize = self.watches.iter().map(|w| WATCH_OVERHEAD + w.path.len() + w.token.len()).sum();
        let txs: usize = self.txs.values().map(|t| TX_OVERHEAD + t.bytes()).sum();
        let out = self.out_bytes + self.out.len() * OUT_OVERHEAD;
        let merge: usize = self.unsent_events.iter().map(|e| e.len() + OUT_OVERHEAD).sum();
        watches + txs + out + merge + self.decoder.buffered()
    }

    fn push(&mut self, bytes: Vec<u8>, kind: OutKind) {
        self.out_bytes += bytes.len();
        if kind == OutKind::Reply {
            self.replies += 1;
        }
        self.out.push_back(OutMsg { bytes, sent: 0, kind });
    }

    fn queue_event(&mut self, quotas: &Quotas, epath: &str, token: &[u8]) {
        let mut payload = Vec::with_capacity(epath.len() + token.len() + 2);
        payload.extend_from_slice(epath.as_bytes());
        payload.push(0);
        payload.extend_from_slice(token);
        payload.push(0);
        let Some(msg) = Message::new(XsdSockmsgType::WatchEvent as u32, 0, 0, payload) else {
            // Too long to send at all: xenstored drops it silently too.
            self.dropped_events += 1;
            return;
        };
        let bytes = msg.encode();
        let mergeable = !path::is_special(epath);
        if mergeable && self.unsent_events.contains(&bytes) {
            return;
        }
        let budget = if self.caller.privileged {
            quotas.privileged_event_queue_bytes
        } else {
            quotas.event_queue_bytes
        };
        if self.out_bytes.saturating_add(bytes.len()) > budget {
            self.dropped_events += 1;
            return;
        }
        if mergeable {
            self.unsent_events.insert(bytes.clone());
        }
        self.push(bytes, OutKind::Event);
    }

    fn fire(&mut self, quotas: &Quotas, ch: &Change) {
        if self.broken.is_some() {
            return;
        }
        if !ch.visible_under.iter().any(|p| self.caller.access(p).contains(Access::READ)) {
            return;
        }
        let mut hits: Vec<(String, Vec<u8>)> = Vec::new();
        for w in &self.watches {
            let matches = if ch.exact { ch.path == w.path } else { path::is_child(&ch.path, &w.path) };
            if !matches {
                continue;
            }
            let epath = if w.relative {
                path::strip_domain_prefix(&ch.path, self.caller.domid).unwrap_or(&ch.path)
            } else {
                &ch.path
            };
            hits.push((String::from(epath), w.token.clone()));
        }
        for (epath, token) in hits {
            self.queue_event(quotas, &epath, &token);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Domain {
    conn: ConnId,
}

/// A successful reply: its payload, and possibly a watch event to queue right after it (the
/// initial firing of a new watch).
struct Reply {
    payload: Vec<u8>,
    then_event: Option<(String, Vec<u8>)>,
}

impl Reply {
    fn ok() -> Reply {
        Reply { payload: Vec::from(&b"OK\0"[..]), then_event: None }
    }
    fn data(payload: Vec<u8>) -> Reply {
        Reply { payload, then_event: None }
    }
    fn string(s: &str) -> Reply {
        let mut payload = Vec::from(s.as_bytes());
        payload.push(0);
        Reply { payload, then_event: None }
    }
}

/// The xenstore server: the store plus every connection.
#[derive(Debug)]
pub struct Xenstore {
    store: Store,
    conns: BTreeMap<ConnId, Conn>,
    domains: BTreeMap<DomId, Domain>,
    next_conn: u32,
    actions: Vec<Action>,
    quotas: Quotas,
    /// dom0's heap is short: unprivileged requests that would allocate are refused.
    low_memory: bool,
}

impl Default for Xenstore {
    fn default() -> Self {
        Xenstore::new(Quotas::default())
    }
}

impl Xenstore {
    /// A server with xenstored's initial tree and no connections.
    pub fn new(quotas: Quotas) -> Xenstore {
        Xenstore {
            store: Store::new(),
            conns: BTreeMap::new(),
            domains: BTreeMap::new(),
            next_conn: 1,
            actions: Vec::new(),
            quotas,
            low_memory: false,
        }
    }

    /// Tells the store whether dom0's heap is short (below what any one request may need):
    /// while it is, every unprivileged request that would make xenstored hold more memory
    /// gets `ENOMEM`, so no client's request can reach a failing allocation.
    pub fn set_low_memory(&mut self, low: bool) {
        self.low_memory = low;
    }

    /// The heap bytes xenstored holds for `domid`: its nodes and its connections' state.
    pub fn memory_used(&self, domid: DomId) -> usize {
        let conns: usize = self.conns.values().filter(|c| c.caller.domid == domid).map(Conn::mem_size).sum();
        self.store.mem_of(domid).saturating_add(conns)
    }

    /// What `caller` may still make xenstored hold (`None`: no limit, it is privileged).
    fn mem_left(&self, caller: &Caller) -> Option<usize> {
        if caller.privileged {
            return None;
        }
        if self.low_memory {
            return Some(0);
        }
        Some(self.quotas.memory_per_domain.saturating_sub(self.memory_used(caller.domid)))
    }

    /// The tree, for inspection.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The limits in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    fn new_conn(&mut self, caller: Caller) -> ConnId {
        let mut id = self.next_conn;
        while id == 0 || self.conns.contains_key(&ConnId(id)) {
            id = id.wrapping_add(1);
        }
        self.next_conn = id.wrapping_add(1);
        self.conns.insert(ConnId(id), Conn::new(caller));
        ConnId(id)
    }

    /// Opens a local connection (a client inside dom0, e.g. a backend driver) acting as
    /// `domid`; privileged iff `domid` is dom0.
    pub fn connect_local(&mut self, domid: DomId) -> ConnId {
        self.new_conn(Caller { domid, privileged: domid == DomId::DOM0, target: None })
    }

    /// Closes a connection, dropping its watches and open transactions. A domain's ring
    /// connection is closed by releasing the domain instead.
    pub fn disconnect(&mut self, conn: ConnId) {
        if self.domains.values().any(|d| d.conn == conn) {
            return;
        }
        self.conns.remove(&conn);
    }

    /// The ring connection of an introduced domain.
    pub fn domain_conn(&self, domid: DomId) -> Option<ConnId> {
        self.domains.get(&domid).map(|d| d.conn)
    }

    /// True if `domid` has been introduced and not released.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.domains.contains_key(&domid)
    }

    /// Identity of a connection.
    pub fn caller(&self, conn: ConnId) -> Option<Caller> {
        self.conns.get(&conn).map(|c| c.caller)
    }

    /// Watch events dropped so far on `conn` because its queue was full.
    pub fn dropped_events(&self, conn: ConnId) -> u64 {
        self.conns.get(&conn).map_or(0, |c| c.dropped_events)
    }

    /// Number of watches `conn` holds.
    pub fn watch_count(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.watches.len())
    }

    /// Number of transactions `conn` has open.
    pub fn transaction_count(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.txs.len())
    }

    /// Pending work for the caller, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        core::mem::take(&mut self.actions)
    }

    /// Bytes waiting to be written to `conn`'s response ring.
    pub fn pending_output(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.out_bytes)
    }

    /// Copies up to `buf.len()` queued output bytes of `conn` into `buf` and forgets them.
    pub fn read_output(&mut self, conn: ConnId, buf: &mut [u8]) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else { return 0 };
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = c.out.front_mut() else { break };
            if front.sent == 0 && front.kind == OutKind::Event {
                c.unsent_events.remove(&front.bytes);
            }
            let k = (front.bytes.len() - front.sent).min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&front.bytes[front.sent..front.sent + k]);
            front.sent += k;
            n += k;
            c.out_bytes -= k;
            if front.sent == front.bytes.len() {
                if front.kind == OutKind::Reply {
                    c.replies -= 1;
                }
                c.out.pop_front();
            }
        }
        n
    }

    /// Takes request bytes from `conn`'s ring: decodes and handles every message they
    /// complete. Returns how many bytes were taken; the rest must stay in the ring (the
    /// connection has too many unread replies) and be offered again after output is read.
    pub fn feed(&mut self, conn: ConnId, bytes: &[u8]) -> Result<usize, FeedError> {
        self.feed_some(conn, bytes, usize::MAX).map(|f| f.taken)
    }

    /// [`feed`](Self::feed), handling at most `max_messages` whole messages: a caller serving
    /// many connections bounds the work one of them gets per turn. Bytes after the last
    /// message handled are not taken.
    pub fn feed_some(&mut self, conn: ConnId, bytes: &[u8], max_messages: usize) -> Result<Fed, FeedError> {
        let mut fed = Fed::default();
        loop {
            let c = self.conns.get_mut(&conn).ok_or(FeedError::NoConnection)?;
            if let Some(e) = c.broken {
                return Err(FeedError::Protocol(e));
            }
            let limit = if c.caller.privileged {
                self.quotas.privileged_outstanding
            } else {
                self.quotas.outstanding
            };
            if fed.taken == bytes.len() || c.replies >= limit || fed.messages >= max_messages {
                return Ok(fed);
            }
            let (n, res) = c.decoder.decode(&bytes[fed.taken..]);
            fed.taken += n;
            match res {
                Ok(Some(msg)) => {
                    fed.messages += 1;
                    self.handle(conn, &msg)
                }
                Ok(None) => return Ok(fed),
                Err(e) => {
                    let domid = c.caller.domid;
                    c.reset();
                    c.broken = Some(e);
                    self.actions.push(Action::ConnectionBroken { conn, domid, ring_error: e.ring_error() });
                    return Err(FeedError::Protocol(e));
                }
            }
        }
    }

    /// Handles one whole message from `conn`: queues its reply (or ERROR reply) on `conn`
    /// and any watch events it causes on the watching connections.
    pub fn handle(&mut self, conn: ConnId, msg: &Message) {
        let h = msg.header;
        let result = self.dispatch(conn, &h, &msg.payload);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let (reply, event) = match result {
            Ok(r) => match Message::new(h.type_, h.req_id, h.tx_id, r.payload) {
                Some(m) => (m, r.then_event),
                None => (error_reply(&h, Errno::E2BIG), None),
            },
            Err(e) => (error_reply(&h, e), None),
        };
        c.push(reply.encode(), OutKind::Reply);
        if let Some((epath, token)) = event {
            c.queue_event(&self.quotas, &epath, &token);
        }
    }

    fn fire(&mut self, changes: &[Change]) {
        for ch in changes {
            for c in self.conns.values_mut() {
                c.fire(&self.quotas, ch);
            }
        }
    }

    fn fire_special(&mut self, special: &str) {
        let mut visible_under = Vec::new();
        if let Some(n) = self.store.get(special) {
            visible_under.push(n.perms.clone());
        }
        if let Some(n) = self.store.get(ROOT) {
            visible_under.push(n.perms.clone());
        }
        self.fire(&[Change { path: String::from(special), exact: true, visible_under }]);
    }

    /// Fires `@releaseDomain` without releasing anything (for the binary to call when it sees
    /// a domain shut down, as xenstored does on VIRQ_DOM_EXC).
    pub fn notify_domain_shutdown(&mut self) {
        self.fire_special(RELEASE_DOMAIN);
    }

    /// Runs a node operation outside any connection as `caller` (dom0's toolstack uses this
    /// with [`Caller::DOM0`]). Watches fire as for any other change. Only the store requests
    /// (READ, WRITE, MKDIR, RM, DIRECTORY, GET/SET_PERMS, GET_DOMAIN_PATH) are accepted;
    /// paths are resolved for `caller.domid`.
    pub fn execute(&mut self, caller: Caller, req: Request) -> Result<Vec<u8>, Errno> {
        let r = self.store_request(caller, None, req)?;
        Ok(r.payload)
    }

    /// Decodes and runs the request part of a message (everything but queueing the reply).
    fn dispatch(&mut self, conn: ConnId, h: &XsdSockmsg, payload: &[u8]) -> Result<Reply, Errno> {
        let c = self.conns.get(&conn).ok_or(Errno::EIO)?;
        let caller = c.caller;
        let ty = XsdSockmsgType::from_u32(h.type_).filter(|t| wire::is_handled(*t)).ok_or(Errno::ENOSYS)?;
        if wire::privileged_only(ty) && !caller.privileged {
            return Err(Errno::EACCES);
        }
        let tx = if wire::ignores_tx_id(ty) || h.tx_id == 0 {
            None
        } else if c.txs.contains_key(&h.tx_id) {
            Some(h.tx_id)
        } else {
            return Err(Errno::ENOENT);
        };
        let req = Request::parse(ty, payload)?;
        match req {
            Request::Watch { path, token } => self.watch(conn, &path, token),
            Request::Unwatch { path, token } => self.unwatch(conn, &path, &token),
            Request::ResetWatches => {
                let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
                c.watches.clear();
                c.txs.clear();
                Ok(Reply::ok())
            }
            Request::TransactionStart => self.transaction_start(conn, tx),
            Request::TransactionEnd { commit } => self.transaction_end(conn, tx, commit),
            Request::Introduce { domid, gfn, port } => self.introduce(domid, gfn, port),
            Request::Release { domid } => {
                if domid == DomId::DOM0 {
                    return Err(Errno::EINVAL);
                }
                self.release_domain(domid).map(|()| Reply::ok())
            }
            Request::Resume { domid } => {
                if domid == DomId::DOM0 {
                    return Err(Errno::EINVAL);
                }
                if !self.domains.contains_key(&domid) {
                    return Err(Errno::ENOENT);
                }
                Ok(Reply::ok())
            }
            Request::IsDomainIntroduced { domid } => {
                let yes = domid == DomId::SELF || domid == DomId::DOM0 || self.domains.contains_key(&domid);
                Ok(Reply::string(if yes { "T" } else { "F" }))
            }
            Request::SetTarget { domid, target } => self.set_target(domid, target),
            Request::Control { args } => self.control(&args),
            req => self.store_request(caller, tx.map(|id| (conn, id)), req),
        }
    }

    /// The node operations, globally or inside transaction `tx` of a connection.
    fn store_request(
        &mut self,
        caller: Caller,
        tx: Option<(ConnId, u32)>,
        req: Request,
    ) -> Result<Reply, Errno> {
        let canon = |p: &str| path::canonicalize(p, caller.domid);
        let quotas = self.quotas.clone();
        let mem_left = self.mem_left(&caller);
        // In a transaction the copies are charged to it (bounded below); outside one, the
        // nodes themselves.
        let ctx = ops::Ctx { caller, quotas: &quotas, mem_left: if tx.is_some() { None } else { mem_left } };
        let run = |v: &mut dyn View| -> Result<(Reply, Vec<Change>), Errno> {
            Ok(match req {
                Request::Read { path } => (Reply::data(ops::read(v, &caller, &canon(&path)?)?), Vec::new()),
                Request::Directory { path } => {
                    (Reply::data(ops::directory(v, &caller, &canon(&path)?)?.children_wire()), Vec::new())
                }
                Request::DirectoryPart { path, offset } => {
                    let n = ops::directory(v, &caller, &canon(&path)?)?;
                    (Reply::data(directory_part(&n, offset as usize)), Vec::new())
                }
                Request::GetPerms { path } => {
                    (Reply::data(ops::get_perms(v, &caller, &canon(&path)?)?.to_wire()), Vec::new())
                }
                Request::Write { path, value } => (Reply::ok(), ops::write(v, &ctx, &canon(&path)?, value)?),
                Request::Mkdir { path } => (Reply::ok(), ops::mkdir(v, &ctx, &canon(&path)?)?),
                Request::Rm { path } => (Reply::ok(), ops::rm(v, &ctx, &canon(&path)?)?),
                Request::SetPerms { path, perms } => {
                    (Reply::ok(), ops::set_perms(v, &ctx, &canon(&path)?, perms)?)
                }
                Request::GetDomainPath { domid } => (Reply::string(&path::domain_path(domid)), Vec::new()),
                _ => return Err(Errno::EINVAL),
            })
        };
        match tx {
            None => {
                let (reply, changes) = run(&mut Global(&mut self.store))?;
                self.fire(&changes);
                Ok(reply)
            }
            Some((conn, id)) => {
                let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
                let t = c.txs.get_mut(&id).ok_or(Errno::ENOENT)?;
                if let Some(left) = mem_left {
                    t.set_ceiling(t.bytes().saturating_add(left));
                }
                let (reply, changes) = run(&mut InTx { store: &self.store, tx: t })?;
                for ch in &changes {
                    t.note_change(&ch.path, ch.exact);
                }
                Ok(reply)
            }
        }
    }

    fn watch(&mut self, conn: ConnId, raw: &str, token: Vec<u8>) -> Result<Reply, Errno> {
        let caller = self.conns.get(&conn).ok_or(Errno::EIO)?.caller;
        let mem_left = self.mem_left(&caller);
        let quotas = &self.quotas;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let canonical = path::canonicalize(raw, c.caller.domid)?;
        if c.watches.iter().any(|w| w.path == canonical && w.token == token) {
            return Err(Errno::EEXIST);
        }
        let limit = if c.caller.privileged { quotas.privileged_watches } else { quotas.watches };
        if c.watches.len() >= limit {
            return Err(Errno::E2BIG);
        }
        let cost = WATCH_OVERHEAD + canonical.len() + token.len();
        if mem_left.is_some_and(|left| cost > left) {
            return Err(Errno::ENOMEM);
        }
        let relative = !raw.starts_with('/') && !raw.starts_with('@');
        c.watches.push(Watch { path: canonical, token: token.clone(), relative });
        Ok(Reply { payload: Vec::from(&b"OK\0"[..]), then_event: Some((String::from(raw), token)) })
    }

    fn unwatch(&mut self, conn: ConnId, raw: &str, token: &[u8]) -> Result<Reply, Errno> {
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let canonical = path::canonicalize(raw, c.caller.domid)?;
        let i =
            c.watches.iter().position(|w| w.path == canonical && w.token == token).ok_or(Errno::ENOENT)?;
        c.watches.remove(i);
        Ok(Reply::ok())
    }

    fn transaction_start(&mut self, conn: ConnId, tx: Option<u32>) -> Result<Reply, Errno> {
        if tx.is_some() {
            return Err(Errno::EBUSY);
        }
        let caller = self.conns.get(&conn).ok_or(Errno::EIO)?.caller;
        if self.mem_left(&caller).is_some_and(|left| TX_OVERHEAD > left) {
            return Err(Errno::ENOMEM);
        }
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let limit =
            if c.caller.privileged { self.quotas.privileged_transactions } else { self.quotas.transactions };
        if c.txs.len() >= limit {
            return Err(Errno::ENOSPC);
        }
        let mut id = c.next_tx;
        while id == 0 || c.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        let bytes = if c.caller.privileged {
            self.quotas.privileged_transaction_bytes
        } else {
            self.quotas.transaction_bytes
        };
        c.txs.insert(id, Transaction::new(self.quotas.nodes_per_transaction, bytes));
        Ok(Reply::string(&format!("{id}")))
    }

    fn transaction_end(&mut self, conn: ConnId, tx: Option<u32>, commit: bool) -> Result<Reply, Errno> {
        let id = tx.ok_or(Errno::ENOENT)?;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let t = c.txs.remove(&id).ok_or(Errno::ENOENT)?;
        let caller = c.caller;
        if commit {
            let quota = (!caller.privileged).then_some(self.quotas.nodes_per_domain);
            // The transaction's own bytes are freed as it commits.
            let mem = self.mem_left(&caller).map(|left| (caller.domid, left));
            let changes = t.commit(&mut self.store, quota, mem)?;
            self.fire(&changes);
        }
        Ok(Reply::ok())
    }

    fn introduce(&mut self, domid: DomId, gfn: u64, port: Port) -> Result<Reply, Errno> {
        if domid == DomId::DOM0 || !domid.is_real() {
            return Err(Errno::EINVAL);
        }
        if let Some(d) = self.domains.get(&domid) {
            let conn = d.conn;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.reset();
            }
            self.actions.push(Action::Introduce { domid, conn, gfn, port, reset: true });
            return Ok(Reply::ok());
        }
        let conn = self.new_conn(Caller::domu(domid));
        self.domains.insert(domid, Domain { conn });
        self.actions.push(Action::Introduce { domid, conn, gfn, port, reset: false });
        self.fire_special(INTRODUCE_DOMAIN);
        Ok(Reply::ok())
    }

    /// INTRODUCE without a wire round trip, for dom0's in-kernel toolstack: the same checks,
    /// actions and `@introduceDomain` firing. Returns the domain's ring connection.
    pub fn introduce_domain(&mut self, domid: DomId, gfn: u64, port: Port) -> Result<ConnId, Errno> {
        if port.0 == 0 {
            return Err(Errno::EINVAL);
        }
        self.introduce(domid, gfn, port)?;
        self.domain_conn(domid).ok_or(Errno::EIO)
    }

    /// Forgets an introduced domain: drops its connection (watches first, so removing its
    /// nodes does not notify it), removes every node it owns (xenstored's default; the
    /// removals fire watches), strips it from every permission list so a later domain with
    /// the same id inherits nothing, fires `@releaseDomain` and asks the binary to tear down
    /// the ring.
    pub fn release_domain(&mut self, domid: DomId) -> Result<(), Errno> {
        let d = self.domains.remove(&domid).ok_or(Errno::ENOENT)?;
        self.conns.remove(&d.conn);
        for c in self.conns.values_mut() {
            if c.caller.target == Some(domid) {
                c.caller.target = None;
            }
        }
        // Topmost nodes owned by the domain; removing them takes their subtrees.
        let mut owned = Vec::new();
        let mut stack = alloc::vec![String::from(ROOT)];
        while let Some(p) = stack.pop() {
            let Some(n) = self.store.get(&p) else { continue };
            if p != ROOT && n.perms.owner() == domid {
                owned.push(p);
                continue;
            }
            for c in &n.children {
                stack.push(path::child(&p, c));
            }
        }
        let quotas = self.quotas.clone();
        let ctx = ops::Ctx { caller: Caller::DOM0, quotas: &quotas, mem_left: None };
        for p in owned {
            if let Ok(changes) = ops::rm(&mut Global(&mut self.store), &ctx, &p) {
                self.fire(&changes);
            }
        }
        for special in [INTRODUCE_DOMAIN, RELEASE_DOMAIN] {
            if let Some(mut n) = self.store.get(special).cloned() {
                if n.perms.owner() == domid {
                    n.perms.set_owner(DomId::DOM0);
                    self.store.put(special, n);
                }
            }
        }
        self.store.forget_domain_perms(domid);
        self.fire_special(RELEASE_DOMAIN);
        self.actions.push(Action::Release { domid, conn: d.conn });
        Ok(())
    }

    fn set_target(&mut self, domid: DomId, target: DomId) -> Result<Reply, Errno> {
        let conn = self.domains.get(&domid).ok_or(Errno::ENOENT)?.conn;
        if !self.domains.contains_key(&target) {
            return Err(Errno::ENOENT);
        }
        let c = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        c.caller.target = Some(target);
        Ok(Reply::ok())
    }

    fn control(&mut self, args: &[Vec<u8>]) -> Result<Reply, Errno> {
        match args.first().map(Vec::as_slice) {
            Some(b"check") => match self.store.check_invariants() {
                Ok(()) => Ok(Reply::ok()),
                Err(_) => Err(Errno::EIO),
            },
            Some(b"print") => Ok(Reply::ok()),
            Some(b"help") => Ok(Reply::string("check\nprint|<string>\nhelp\n")),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// An ERROR reply carrying the errno's name (req_id and tx_id echoed).
fn error_reply(h: &XsdSockmsg, e: Errno) -> Message {
    let mut payload = Vec::from(xs_wire::error_name(e).as_bytes());
    payload.push(0);
    let len = payload.len() as u32;
    Message {
        header: XsdSockmsg { type_: XsdSockmsgType::Error as u32, req_id: h.req_id, tx_id: h.tx_id, len },
        payload,
    }
}

/// DIRECTORY_PART reply: the node's generation, then as many whole child names from byte
/// `offset` of the child list as fit; a final empty string marks the end of the list.
fn directory_part(n: &Node, offset: usize) -> Vec<u8> {
    let list = n.children_wire();
    let mut out = Vec::from(format!("{}", n.generation).as_bytes());
    out.push(0);
    if offset >= list.len() {
        out.push(0);
        return out;
    }
    let room = wire::PAYLOAD_MAX - out.len() - 1;
    let mut end = offset;
    // Whole strings from `offset` while they fit (`offset` may point inside a name, as in
    // xenstored; the client gets the tail of that name).
    while end < list.len() {
        let len = list[end..].iter().position(|&b| b == 0).map_or(list.len() - end, |i| i + 1);
        if end - offset + len > room {
            break;
        }
        end += len;
    }
    out.extend_from_slice(&list[offset..end]);
    if end == list.len() {
        out.push(0);
    }
    out
}
