//! Taking turns on the bench machine, so no benchmark shares the CPU with another's load.
//!
//! The machine runs dom0's own disk benchmark, the test guest's latency benchmarks (some of
//! which need dom0's xenstored: the event-channel ping-pong and the domain switch set up
//! through it), and a second guest's disk benchmark through blkback. dom0 measures its disk
//! at boot, before it starts xenstored, so:
//!
//! * the bench guest first waits until xenstored answers ([`wait_for_dom0`]), which is when
//!   dom0's disk figures are done, and when everything is over publishes
//!   `data/bench-done`, readable by every domain ([`announce_done`]);
//! * the disk guest, given `after=<domid>`, waits for that domain's `data/bench-done` (or
//!   for the domain to go) before it starts ([`wait_after`]).

use alloc::format;
use alloc::string::String;
use hypercall_abi::Errno;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::xenbus::{self, RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, println, time};

/// How long a domain waits for its turn: longer than every benchmark before it at the
/// largest iteration count.
const TURN_NS: u64 = 1_200_000_000_000;
/// The node announcing the end of the bench guest's benchmarks (relative to its home).
const DONE_NODE: &str = "data/bench-done";

/// A xenstore connection that has answered a request: the first one waits (up to
/// `deadline`) for as long as dom0 is busy before it serves the ring.
pub fn connect_answered(si: &StartInfo, deadline: u64) -> Result<Xenbus<RingTransport>, Errno> {
    let mut xb = loop {
        match xenbus::connect(si) {
            Ok(xb) => break xb,
            Err(Errno::ETIMEDOUT) if time::now_ns() < deadline => {}
            Err(e) => return Err(e),
        }
    };
    let default = xb.transport_mut().timeout_ns;
    xb.transport_mut().timeout_ns = deadline.saturating_sub(time::now_ns()).max(default);
    xb.read(TxId::NONE, "domid")?;
    xb.transport_mut().timeout_ns = default;
    Ok(xb)
}

/// Blocks until xenstored answers us (dom0 starts it once its own disk benchmark is done).
pub fn wait_for_dom0(si: &StartInfo) {
    let t0 = time::now_ns();
    match connect_answered(si, t0.saturating_add(TURN_NS)) {
        Ok(_) => println!("bench: dom0 is serving ({} ms after start)", (time::now_ns() - t0) / 1_000_000),
        Err(e) => println!("bench: no xenstore ({e}); benchmarks that need dom0 will fail"),
    }
}

/// Publishes `data/bench-done` for whoever waits for our turn to end.
pub fn announce_done(si: &StartInfo) {
    if let Err(e) = announce(si, DONE_NODE) {
        println!("bench: cannot announce the end ({e}); a domain waiting for us will time out");
    }
}

/// Publishes `node` (relative to our home) with the value "1", readable by every domain.
pub fn announce(si: &StartInfo, node: &str) -> Result<(), Errno> {
    xenbus::connect(si).and_then(|mut xb| {
        let me = xb.read_string(TxId::NONE, "domid")?;
        xb.write(TxId::NONE, node, b"1")?;
        // Owner first: we keep the node, and every other domain may read it.
        xb.set_perms(TxId::NONE, node, &[&format!("r{}", me.trim())])
    })
}

/// With `after=<domid>`: blocks until that domain has published `data/bench-done`.
pub fn wait_after(si: &StartInfo) {
    let Some(v) = cmdline::get(si.cmdline(), "after") else { return };
    let Some(id) =
        cmdline::parse_u64(v).filter(|&d| d > 0 && d < u64::from(hypercall_abi::DomId::FIRST_RESERVED.0))
    else {
        return println!("bench: ignoring after={v}: not a domain id");
    };
    let t0 = time::now_ns();
    match wait_for(si, id, DONE_NODE, TURN_NS) {
        Ok(true) => {
            println!("bench: d{id} is done ({} ms after start), our turn", (time::now_ns() - t0) / 1_000_000)
        }
        Ok(false) => println!("bench: d{id} did not finish in time; going ahead"),
        Err(e) => println!("bench: waiting for d{id}: {e}; going ahead"),
    }
}

/// Blocks until domain `id` has published `node` (relative to its home) or is gone: `Ok(true)`,
/// or `Ok(false)` when `turn_ns` passed first.
pub fn wait_for(si: &StartInfo, id: u64, node: &str, turn_ns: u64) -> Result<bool, Errno> {
    let deadline = time::now_ns().saturating_add(turn_ns);
    let path = format!("/local/domain/{id}/{node}");
    let mut xb = connect_answered(si, deadline)?;
    // The node becomes readable (and the watch fires) when its owner opens it to us; until
    // then we sleep in the watch wait, costing the benchmarks nothing. Before that, none of
    // the node's changes is visible to us, so every event after the one the registration
    // fires means the owner is done, even if it went before we could read the node (its
    // nodes go with it).
    xb.watch(&path, "bench-done")?;
    xb.transport_mut().timeout_ns = turn_ns;
    let mut events = 0;
    loop {
        let seen = match xb.read(TxId::NONE, &path) {
            Ok(_) => true,
            Err(Errno::ENOENT | Errno::EACCES) => events > 1,
            Err(e) => return Err(e),
        };
        if seen {
            return Ok(true);
        }
        if time::now_ns() >= deadline {
            return Ok(false);
        }
        xb.wait_watch_event()?;
        events += 1;
    }
}

/// Another domain's `data/bench-done`, watched while this one keeps working: a hostile
/// scenario keeps up its pressure until its neighbour (started with `after=`) is done.
pub struct Peer {
    path: String,
    /// Events of our watch after its registration's.
    events: u32,
}

impl Peer {
    /// The token of the watch.
    const TOKEN: &'static str = "peer-done";

    /// Watches domain `id`'s node. Until its owner opens the node to us none of its changes
    /// is visible, so every event after the registration's means the peer is done (or gone,
    /// its nodes with it), as in [`wait_after`].
    pub fn watch(xb: &mut Xenbus<RingTransport>, id: u64) -> Result<Peer, Errno> {
        let path = format!("/local/domain/{id}/{DONE_NODE}");
        xb.watch(&path, Self::TOKEN)?;
        // The registration's own event.
        while xb.wait_watch_event()?.token != Self::TOKEN {}
        Ok(Peer { path, events: 0 })
    }

    /// Takes the queued watch events, counting ours; call it often while adding watches of
    /// one's own (the client's queue is bounded and drops the oldest).
    pub fn take_events(&mut self, xb: &mut Xenbus<RingTransport>) {
        while let Ok(Some(ev)) = xb.next_watch_event() {
            self.events += u32::from(ev.token == Self::TOKEN);
        }
    }

    /// True once the peer is done.
    pub fn done(&mut self, xb: &mut Xenbus<RingTransport>) -> bool {
        self.take_events(xb);
        self.events > 0 || xb.read(TxId::NONE, &self.path).is_ok()
    }
}
