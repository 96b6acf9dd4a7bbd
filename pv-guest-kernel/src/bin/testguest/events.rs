//! `events`: the timer VIRQ (one-shot timer, block, sleep) and an interdomain loopback
//! channel (delivery both ways, masking, close) as Xen delivers them.

use super::{report, results};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::xen::virq;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::{events, hypercall, println, time};

static LOOP_A: AtomicU64 = AtomicU64::new(0);
static LOOP_B: AtomicU64 = AtomicU64::new(0);

fn on_a(_p: Port) {
    LOOP_A.fetch_add(1, Ordering::SeqCst);
}

fn on_b(_p: Port) {
    LOOP_B.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(what: &str, fails: &mut Vec<alloc::string::String>, cond: impl FnMut() -> bool) {
    let deadline = time::now_ns() + 1_000_000_000;
    let r = events::block_until(cond, Some(deadline));
    results::yes(&alloc::format!("{what}.delivered"), r == Ok(true));
    match r {
        Ok(true) => {}
        Ok(false) => fails.push(alloc::format!("{what}: not delivered within 1 s")),
        Err(e) => fails.push(alloc::format!("{what}: block_until failed: {e}")),
    }
}

pub fn run() {
    let mut fails = Vec::new();
    let st = pv_guest_kernel::status();
    if !st.events {
        println!("TEST events FAIL events unavailable ({st:?})");
        return;
    }
    // VIRQ_TIMER is bound by the runtime already: a second bind is refused.
    let again = events::bind_virq(virq::TIMER);
    results::ret("bind-virq-timer-again", again.map_or_else(|e| e.to_ret(), |p| i64::from(p.0)));
    check!(fails, again == Err(Errno::EEXIST), "second bind of VIRQ_TIMER gave {again:?}, want EEXIST");

    // One-shot timer 5 ms ahead, then block.
    let (up0, _, _) = events::counters();
    let ticks0 = time::timer_events();
    let t0 = time::now_ns();
    let r = hypercall::check(hypercall::set_timer_op(t0 + 5_000_000));
    check!(fails, r.is_ok(), "set_timer_op: {r:?}");
    let woke = events::block_until(|| time::timer_events() > ticks0, None);
    let t1 = time::now_ns();
    let (up1, _, _) = events::counters();
    println!(
        "events: timer: {} VIRQ_TIMER, {} upcalls, {} us elapsed",
        time::timer_events() - ticks0,
        up1 - up0,
        (t1 - t0) / 1000
    );
    results::ret("set-timer-op-5ms", r.map_or_else(|e| e.to_ret(), |_| 0));
    results::yes("timer.woke", woke == Ok(true));
    results::yes("timer.not-before-deadline", t1 >= t0 + 5_000_000);
    results::yes("timer.upcall-taken", up1 > up0);
    check!(fails, woke == Ok(true), "block_until for the timer: {woke:?}");
    check!(fails, t1 >= t0 + 5_000_000, "woke after {} ns, before the 5 ms deadline", t1 - t0);
    check!(fails, up1 > up0, "no upcall taken");

    // sleep() on top of it.
    let t2 = time::now_ns();
    let slept = time::sleep(2_000_000);
    let t3 = time::now_ns();
    results::yes("sleep-2ms.long-enough", slept.is_ok() && t3 >= t2 + 2_000_000);
    check!(fails, slept.is_ok() && t3 >= t2 + 2_000_000, "sleep(2 ms): {slept:?} after {} ns", t3 - t2);
    let mut lat = alloc::string::String::new();
    for ms in [1u64, 2, 5, 20] {
        let a = time::now_ns();
        let _ = time::sleep(ms * 1_000_000);
        let us = (time::now_ns() - a) / 1000;
        lat.push_str(&alloc::format!(" {ms}ms->{us}us"));
    }
    println!("events: sleep latency:{lat}");

    // Loopback interdomain channel: a (unbound, for ourselves) <-> b.
    match loopback(&mut fails) {
        Ok(()) => {}
        Err(e) => fails.push(alloc::format!("loopback set-up: {e}")),
    }
    let (up, delivered, stray) = events::counters();
    report("events", &fails, format_args!("{up} upcalls, {delivered} ports handled, {stray} stray"));
}

fn loopback(fails: &mut Vec<alloc::string::String>) -> Result<(), Errno> {
    let a = events::alloc_unbound(DomId::SELF)?;
    let b = events::bind_interdomain(DomId::SELF, a)?;
    println!("events: loopback ports {} <-> {}", a.0, b.0);
    events::attach(a, on_a)?;
    // Xen marks a freshly bound interdomain port pending: b fires once as it is unmasked.
    events::attach(b, on_b)?;
    wait_for("initial event on the bound port", fails, || LOOP_B.load(Ordering::SeqCst) >= 1);
    let b0 = LOOP_B.load(Ordering::SeqCst);
    events::send(b)?;
    wait_for("send b -> a", fails, || LOOP_A.load(Ordering::SeqCst) >= 1);
    events::send(a)?;
    wait_for("send a -> b", fails, || LOOP_B.load(Ordering::SeqCst) > b0);
    // A masked port stays pending until unmasked, then is delivered.
    events::mask(a)?;
    let a0 = LOOP_A.load(Ordering::SeqCst);
    events::send(b)?;
    let si = pv_guest_kernel::shared::get().ok_or(Errno::ENODEV)?;
    results::yes("masked-port.delivered", LOOP_A.load(Ordering::SeqCst) != a0);
    results::yes("masked-port.pending", si.is_pending(a.0));
    check!(fails, LOOP_A.load(Ordering::SeqCst) == a0, "a masked port was delivered");
    check!(fails, si.is_pending(a.0), "a masked port did not stay pending");
    events::unmask(a)?;
    wait_for("delivery on unmask", fails, || LOOP_A.load(Ordering::SeqCst) > a0);
    println!(
        "events: loopback: a got {}, b got {}",
        LOOP_A.load(Ordering::SeqCst),
        LOOP_B.load(Ordering::SeqCst)
    );
    events::close(a)?;
    let r = events::send(a);
    results::ret("send-closed-port", r.map_or_else(|e| e.to_ret(), |_| 0));
    check!(fails, r == Err(Errno::EINVAL), "send on a closed port gave {r:?}, want EINVAL");
    // b's peer is gone: b is unbound again, and sending on it is silently dropped.
    let r = events::send(b);
    results::ret("send-port-whose-peer-closed", r.map_or_else(|e| e.to_ret(), |_| 0));
    check!(fails, r == Ok(()), "send on a port whose peer closed gave {r:?}, want 0");
    events::close(b)?;
    Ok(())
}
