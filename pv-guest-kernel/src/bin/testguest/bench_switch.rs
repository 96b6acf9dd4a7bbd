//! `sched.domain_switch`: what it costs the hypervisor to take the CPU from one domain and
//! give it to another.
//!
//! Method: two test-guest domains yield to each other. This one (`bench-switch`, told its
//! partner's domid by `switch-peer=<domid>`) times `SCHEDOP_yield` with `rdtsc` right around
//! the call, as every other hypercall benchmark does; the partner (`scenario=switch-partner
//! peer=<domid>`) does nothing but yield in a loop. With both runnable and everyone else
//! blocked, the scheduler hands the CPU over on every yield, so one sample is a yield here,
//! a switch to the partner, its yield, and a switch back: the sample divided by two is one
//! yield hypercall plus one domain switch (saving one vCPU's state, loading the other's:
//! registers, FPU, page-table base, the switch of the per-domain mappings). A rescheduling
//! that went elsewhere (dom0's periodic wake-up) shows in the p99, not the median.
//!
//! The partner must not disturb the other benchmarks, so it blocks until told to start and
//! exits when told to stop, through an interdomain event channel it offers: it allocates a
//! port for us and publishes it in its `data/switch-port` (readable by us only); we bind
//! to it and send "go", measure, and send "stop". It then publishes how many times it
//! yielded, which must match our count (the proof that every sample really crossed over),
//! and exits once we have read it.
//! Domain ids come from the command line (the bench machine knows its boot order); nothing
//! in xenstore names one domU to another.

use super::timing::{print, samples, timed4, Failure};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::hypercall::nr;
use hypercall_abi::sched::op as schedop;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::xenbus::{self, RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

const WARMUP: usize = 100;
/// The partner's nodes (relative to its home).
const PORT_NODE: &str = "data/switch-port";
const YIELDS_NODE: &str = "data/switch-yields";
/// How long each side waits for the other's node.
const NODE_WAIT_NS: u64 = 10_000_000_000;

fn err(what: &'static str) -> impl Fn(Errno) -> Failure {
    move |e| format!("{what}: {e}")
}

fn peer_option(cmd: &str, key: &str) -> Result<Option<DomId>, Failure> {
    match cmdline::get_u64(cmd, key, 0, 1, u64::from(DomId::FIRST_RESERVED.0 - 1)) {
        Ok(0) => Ok(None),
        Ok(id) => Ok(Some(DomId(id as u16))),
        Err(e) => Err(format!("bad {key}= ({e:?})")),
    }
}

/// Reads a number from another domain's node, waiting for it to appear (and become
/// readable: the owner writes it, then opens it to us).
fn read_peer_number(xb: &mut Xenbus<RingTransport>, peer: DomId, node: &str) -> Result<u64, Failure> {
    let path = format!("/local/domain/{}/{node}", peer.0);
    let deadline = time::now_ns().saturating_add(NODE_WAIT_NS);
    loop {
        match xb.read_string(TxId::NONE, &path) {
            Ok(v) => return cmdline::parse_u64(v.trim()).ok_or_else(|| format!("{path} is \"{v}\"")),
            Err(Errno::ENOENT | Errno::EACCES) if time::now_ns() < deadline => {
                let _ = time::sleep(5_000_000);
            }
            Err(e) => return Err(format!("{path}: {e}")),
        }
    }
}

/// Writes `value` to our `node`, readable by `peer` (owner first: we keep it).
fn publish(
    xb: &mut Xenbus<RingTransport>,
    node: &str,
    value: u64,
    me: DomId,
    peer: DomId,
) -> Result<(), Failure> {
    xb.write(TxId::NONE, node, format!("{value}").as_bytes()).map_err(err("write"))?;
    let perms: [String; 2] = [format!("n{}", me.0), format!("r{}", peer.0)];
    xb.set_perms(TxId::NONE, node, &[&perms[0], &perms[1]]).map_err(err("set_perms"))
}

// ---------------------------------------------------------------------------------------------
// The measuring side.

pub fn run(si: &StartInfo) {
    let cmd = si.cmdline();
    let peer = match peer_option(cmd, "switch-peer") {
        Ok(Some(p)) => p,
        Ok(None) => {
            return println!("bench-switch: no switch-peer=<domid>; sched.domain_switch not measured")
        }
        Err(e) => return println!("TEST bench-switch FAIL {e}"),
    };
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => return println!("TEST bench-switch FAIL bad iters= ({e:?})"),
    };
    match measure(si, peer, iters) {
        Ok(yields) => println!("TEST bench-switch PASS the partner d{} yielded {yields} times", peer.0),
        Err(e) => println!("TEST bench-switch FAIL {e}"),
    }
}

fn measure(si: &StartInfo, peer: DomId, iters: usize) -> Result<u64, Failure> {
    let mut xb = xenbus::connect(si).map_err(err("xenstore"))?;
    let remote = read_peer_number(&mut xb, peer, PORT_NODE)?;
    let remote = u32::try_from(remote).map_err(|_| format!("partner port {remote}"))?;
    // Our end stays masked: the event a bind raises on it, and any other, are not ours to take.
    let tx = events::bind_interdomain(peer, Port(remote)).map_err(err("bind_interdomain"))?;
    let r = yield_to(tx, iters);
    let _ = events::send(tx);
    let r = r.and_then(|mut s| {
        let yields = read_peer_number(&mut xb, peer, YIELDS_NODE);
        // The partner waits for this before it exits.
        let _ = events::send(tx);
        let yields = yields?;
        let ours = (iters + WARMUP) as u64;
        // Both sides count every yield; a time-slice expiry between two yields can let the
        // partner yield once more without us (and vice versa).
        if yields.abs_diff(ours) > ours / 1000 + 2 {
            return Err(format!(
                "the partner yielded {yields} times to our {ours}: not every sample switched"
            ));
        }
        print("sched.domain_switch", &mut s)?;
        Ok(yields)
    });
    let _ = events::close(tx);
    r
}

/// Sends "go", then times `iters` yields (after a warm-up); each sample is half a round trip.
fn yield_to(tx: Port, iters: usize) -> Result<alloc::vec::Vec<u32>, Failure> {
    let mut s = samples(iters)?;
    events::send(tx).map_err(err("send go"))?;
    // Our own events (the timer) would land in samples: none while measuring.
    let _g = events::mask_upcalls();
    for i in 0..iters + WARMUP {
        let (t, r) = timed4::<{ nr::SCHED_OP }>(u64::from(schedop::YIELD), 0, 0, 0);
        if r != 0 {
            return Err(format!("yield returned {r}"));
        }
        if i >= WARMUP {
            s.push(t / 2);
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// The partner.

/// Events from the measuring side: "go", "stop", then "read your count".
static EVENTS: AtomicU64 = AtomicU64::new(0);

fn on_event(_: Port) {
    EVENTS.fetch_add(1, Ordering::AcqRel);
}

pub fn partner(si: &StartInfo) {
    let cmd = si.cmdline();
    let peer = match peer_option(cmd, "peer") {
        Ok(Some(p)) => p,
        Ok(None) => return println!("TEST switch-partner FAIL no peer=<domid>"),
        Err(e) => return println!("TEST switch-partner FAIL {e}"),
    };
    // Long enough for every benchmark before ours at 10^7 iterations; a lost partner then
    // ends instead of keeping the machine up.
    let timeout_s = match cmdline::get_u64(cmd, "timeout", 3600, 1, 86_400) {
        Ok(t) => t,
        Err(e) => return println!("TEST switch-partner FAIL bad timeout= ({e:?})"),
    };
    match serve(si, peer, timeout_s * 1_000_000_000) {
        Ok(n) => println!("TEST switch-partner PASS {n} yields for d{}", peer.0),
        Err(e) => println!("TEST switch-partner FAIL {e}"),
    }
}

fn serve(si: &StartInfo, peer: DomId, timeout_ns: u64) -> Result<u64, Failure> {
    let mut xb = xenbus::connect(si).map_err(err("xenstore"))?;
    let me = xb.read_string(TxId::NONE, "domid").map_err(err("read domid"))?;
    let me = DomId(me.trim().parse::<u16>().map_err(|_| format!("our domid is \"{me}\""))?);
    let port = events::alloc_unbound(peer).map_err(err("alloc_unbound"))?;
    events::attach(port, on_event).map_err(err("attach"))?;
    publish(&mut xb, PORT_NODE, u64::from(port.0), me, peer)?;
    let r = yield_until_stopped(timeout_ns);
    let r = r.and_then(|n| publish(&mut xb, YIELDS_NODE, n, me, peer).map(|_| n));
    if r.is_ok() {
        // Our nodes go when we do: stay until the count has been read.
        let read = time::now_ns().saturating_add(NODE_WAIT_NS);
        if events::block_until(|| EVENTS.load(Ordering::Acquire) >= 3, Some(read)) != Ok(true) {
            println!("switch-partner: d{} did not confirm it read our count", peer.0);
        }
    }
    let _ = events::close(port);
    r
}

fn yield_until_stopped(timeout_ns: u64) -> Result<u64, Failure> {
    let deadline = time::now_ns().saturating_add(timeout_ns);
    match events::block_until(|| EVENTS.load(Ordering::Acquire) >= 1, Some(deadline)) {
        Ok(true) => {}
        Ok(false) => return Err("no go within the time limit".into()),
        Err(e) => return Err(format!("block: {e}")),
    }
    let mut n = 0u64;
    while EVENTS.load(Ordering::Acquire) < 2 {
        hypercall::yield_cpu();
        n += 1;
        if n.is_multiple_of(4096) && time::now_ns() >= deadline {
            return Err("no stop within the time limit".into());
        }
    }
    Ok(n)
}
