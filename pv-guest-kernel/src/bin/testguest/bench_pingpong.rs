//! `bench-pingpong`: `evtchn.pingpong`, the round trip of an event from this domU to dom0
//! and back, up to the moment our own handler runs.
//!
//! Set-up goes through xenstore as a split driver's would: we allocate a port unbound for
//! dom0 and write its number to our `data/evtchn-echo` node; dom0 watches the node, binds the
//! port and attaches an echo handler that sends straight back from its upcall
//! (`dom0/src/evtchn_echo.rs`), so dom0's control loop is not on the path. We probe until an
//! echo comes back, let anything still in flight land, and measure.
//!
//! With `probe-hostile`, the set-up first writes values dom0 must refuse (not a number,
//! port 0, a port beyond the 2-level ABI, our xenstore port (already bound), a port
//! allocated for ourselves rather than dom0); dom0 logs each refusal and the echo then
//! works on the real port.
//!
//! One sample, from `rdtsc` before our `EVTCHNOP_send` to `rdtsc` in our handler: the send
//! (dom0 becomes runnable), `SCHEDOP_block` (the switch to dom0), the bounce into dom0's
//! upcall and its 2-level scan, dom0's send back, dom0's `iret` and its own way back into
//! `SCHEDOP_block` (the switch back), and the bounce into our upcall. On one CPU with a
//! round-robin scheduler this is what a request/response over an event channel costs
//! between two domains that wait by blocking, as split drivers do.

use super::timing::{print, samples, Failure};
use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::xenbus::{self, TxId};
use pv_guest_kernel::{cmdline, events, hypercall, println, shared, time};

const WARMUP: usize = 100;
/// Our node dom0 watches.
const NODE: &str = "data/evtchn-echo";
/// How long dom0 has to bind the port once we published it.
const CONNECT_NS: u64 = 10_000_000_000;
/// How long one echo may take before the benchmark gives up (a dead dom0).
const ECHO_NS: u64 = 1_000_000_000;

/// The time our handler last ran (0: not since it was cleared), and how many echoes came.
static HANDLER_TSC: AtomicU64 = AtomicU64::new(0);
static ECHOES: AtomicU64 = AtomicU64::new(0);

fn on_echo(_: Port) {
    HANDLER_TSC.store(time::rdtsc(), Ordering::Release);
    ECHOES.fetch_add(1, Ordering::AcqRel);
}

pub fn run(si: &StartInfo) {
    let cmd = si.cmdline();
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => return println!("TEST bench-pingpong FAIL bad iters= ({e:?})"),
    };
    let hostile = cmdline::flag(cmd, "probe-hostile");
    match measure(si, iters, hostile) {
        Ok(()) => println!("TEST bench-pingpong PASS"),
        Err(e) => println!("TEST bench-pingpong FAIL {e}"),
    }
}

/// Waits, blocked, until our handler has run since `HANDLER_TSC` was cleared, or fails at
/// system time `deadline`. Upcalls are masked between the check and `SCHEDOP_block` (which
/// unmasks and checks for events atomically), so a wake-up is never lost.
fn wait_echo(deadline: u64) -> Result<(), Failure> {
    let v = shared::vcpu0().ok_or("no vcpu_info")?;
    let _g = events::mask_upcalls();
    loop {
        if HANDLER_TSC.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        if time::now_ns() >= deadline {
            return Err("no echo from dom0".into());
        }
        hypercall::block();
        v.evtchn_upcall_mask.store(1, Ordering::SeqCst);
    }
}

fn measure(si: &StartInfo, iters: usize, hostile: bool) -> Result<(), Failure> {
    let err = |what: &'static str| move |e| format!("{what}: {e}");
    let mut xb = xenbus::connect(si).map_err(err("xenstore"))?;
    if hostile {
        let own = events::alloc_unbound(DomId::SELF).map_err(err("alloc_unbound"))?;
        let store = format!("{}", si.store_evtchn.0);
        let own_s = format!("{}", own.0);
        for v in ["junk", "0", "4096", &store, &own_s] {
            println!("bench-pingpong: offering dom0 \"{v}\"");
            xb.write(TxId::NONE, NODE, v.as_bytes()).map_err(err("write data/evtchn-echo"))?;
            // dom0 deals with the watch before it lets us run again; the pause is margin.
            let _ = time::sleep(5_000_000);
        }
        let _ = events::close(own);
    }
    let port = events::alloc_unbound(DomId::DOM0).map_err(err("alloc_unbound"))?;
    events::attach(port, on_echo).map_err(err("attach"))?;
    xb.write(TxId::NONE, NODE, format!("{}", port.0).as_bytes()).map_err(err("write data/evtchn-echo"))?;
    let r = connect_and_measure(port, iters);
    let _ = xb.rm(TxId::NONE, NODE);
    let _ = events::close(port);
    r
}

fn connect_and_measure(port: Port, iters: usize) -> Result<(), Failure> {
    // A send before dom0 has bound the port is dropped (the port is still unbound), so probe
    // until one comes back.
    let give_up = time::now_ns().saturating_add(CONNECT_NS);
    loop {
        HANDLER_TSC.store(0, Ordering::Release);
        events::send(port).map_err(|e| format!("probe: {e}"))?;
        match wait_echo(time::now_ns() + 20_000_000) {
            Ok(()) => break,
            Err(_) if time::now_ns() < give_up => {}
            Err(_) => return Err("dom0 never bound data/evtchn-echo".into()),
        }
    }
    // Echoes of earlier probes (and of dom0's bind) may still be on their way.
    let _ = time::sleep(10_000_000);
    let connected = ECHOES.load(Ordering::Acquire);
    println!("bench-pingpong: dom0 echoes on our port {} ({connected} echoes while connecting)", port.0);

    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        if i % 1024 == 0 {
            // A timer well past one echo, re-armed before it fires, so a lost echo ends
            // the wait instead of hanging the domain; set outside the timed window.
            hypercall::check(hypercall::set_timer_op(time::now_ns() + 2 * ECHO_NS))
                .map_err(|e| format!("set_timer_op: {e}"))?;
        }
        HANDLER_TSC.store(0, Ordering::Release);
        let t0 = time::rdtsc();
        events::send(port).map_err(|e| format!("send: {e}"))?;
        wait_echo(time::now_ns() + ECHO_NS).map_err(|e| format!("round trip {i}: {e}"))?;
        let t1 = HANDLER_TSC.load(Ordering::Acquire);
        if i >= WARMUP {
            s.push(t1.saturating_sub(t0).min(u64::from(u32::MAX)) as u32);
        }
    }
    let _ = hypercall::set_timer_op(0);
    let echoes = ECHOES.load(Ordering::Acquire) - connected;
    if echoes != (iters + WARMUP) as u64 {
        return Err(format!("{echoes} echoes for {} sends", iters + WARMUP));
    }
    print("evtchn.pingpong", &mut s)?;
    Ok(())
}
