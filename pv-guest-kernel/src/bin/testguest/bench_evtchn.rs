//! `bench-evtchn`: the costs of the communication primitives inside one domain, measured
//! like the other benchmarks (`timing::timed4`, or `rdtsc` brackets where the end is an
//! upcall):
//!
//! * `evtchn.send` — `EVTCHNOP_send` on a loopback interdomain channel whose receiving port
//!   is masked, with its pending bit cleared before each send, so every sample is the full
//!   send path (bitmaps, no upcall);
//! * `evtchn.upcall` — from before the same send, with the port unmasked, to the moment the
//!   event handler runs: send, exit path, bounce frame, upcall, the 2-level scan;
//! * `grant.copy_4k` — `GNTTABOP_copy` of one whole page between two of our own frames
//!   (gmfn on both sides);
//! * `grant.map_unmap` — `GNTTABOP_map_grant_ref` of a page we granted to ourselves at a
//!   free address, then `GNTTABOP_unmap_grant_ref`: each sample is the pair.

use super::timing::{print, samples, timed4, Failure};
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::event_channel::{op as evtop, EvtchnSend, EvtchnStatus};
use hypercall_abi::grant_table::{
    gntmap, gntst, op as gntop, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabUnmapGrantRef,
};
use hypercall_abi::hypercall::nr;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{cmdline, events, gnttab, hypercall, println, shared, time};

/// Where grant maps land (a page of its own L1, first mapped to a scratch page).
const MAP_VA: u64 = pv_guest_kernel::va::TEST_PROBES;
const WARMUP: usize = 100;

static HANDLER_TSC: AtomicU64 = AtomicU64::new(0);

fn record_tsc(_: Port) {
    HANDLER_TSC.store(time::rdtsc(), Ordering::Release);
}

/// Our own domain id, from the status of a loopback port (its remote end is ourselves).
fn own_domid(port: Port) -> Result<DomId, Failure> {
    let mut st = EvtchnStatus { dom: DomId::SELF, port, ..Default::default() };
    hypercall::check(hypercall::event_channel_op(evtop::STATUS, &mut st))
        .map_err(|e| alloc::format!("status: {e}"))?;
    Ok(st.interdomain().0)
}

pub fn run(cmd: &str) {
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => return println!("TEST bench-evtchn FAIL bad iters= ({e:?})"),
    };
    match measure(iters) {
        Ok(()) => println!("TEST bench-evtchn PASS"),
        Err(e) => println!("TEST bench-evtchn FAIL {e}"),
    }
}

fn measure(iters: usize) -> Result<(), Failure> {
    let err = |what: &'static str| move |e| alloc::format!("{what}: {e}");
    // A loopback channel: `tx` is bound to `rx`, both ours.
    let rx = events::alloc_unbound(DomId::SELF).map_err(err("alloc_unbound"))?;
    let tx = events::bind_interdomain(DomId::SELF, rx).map_err(err("bind_interdomain"))?;
    let me = own_domid(tx)?;
    let si = shared::get().ok_or("shared_info is not mapped")?;
    let (w, bit) = shared::SharedInfoPage::port_bit(rx.0);
    let send = EvtchnSend { port: tx };
    let send_arg = hypercall::ptr(&send);

    // evtchn.send: receiving port masked, pending cleared before each sample.
    events::mask(rx).map_err(err("mask"))?;
    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        si.evtchn_pending[w].fetch_and(!bit, Ordering::SeqCst);
        let (t, r) = timed4::<{ nr::EVENT_CHANNEL_OP }>(u64::from(evtop::SEND), send_arg, 0, 0);
        if r != 0 {
            return Err(alloc::format!("send returned {r}"));
        }
        if i >= WARMUP {
            s.push(t);
        }
    }
    print("evtchn.send", &mut s)?;

    // evtchn.upcall: unmasked, with a handler that stamps the time it runs.
    si.evtchn_pending[w].fetch_and(!bit, Ordering::SeqCst);
    events::attach(rx, record_tsc).map_err(err("attach"))?;
    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        HANDLER_TSC.store(0, Ordering::Release);
        let t0 = time::rdtsc();
        events::send(tx).map_err(err("send"))?;
        let t1 = HANDLER_TSC.load(Ordering::Acquire);
        if t1 == 0 {
            return Err("the upcall did not arrive before the send returned".into());
        }
        if i >= WARMUP {
            s.push(t1.saturating_sub(t0).min(u64::from(u32::MAX)) as u32);
        }
    }
    print("evtchn.upcall", &mut s)?;
    let _ = events::close(tx);
    let _ = events::close(rx);

    // grant.copy_4k: gmfn to gmfn, both ours.
    gnttab::init(gnttab::DEFAULT_FRAMES).map_err(err("grant table"))?;
    let a = mm::alloc_page().map_err(err("alloc"))?;
    let b = mm::alloc_page().map_err(err("alloc"))?;
    let mut copy = GnttabCopy {
        source: GnttabCopyPtr::gmfn(a.mfn.0, DomId::SELF, 0),
        dest: GnttabCopyPtr::gmfn(b.mfn.0, DomId::SELF, 0),
        len: 4096,
        flags: 0,
        ..Default::default()
    };
    let copy_arg = hypercall::ptr_mut(&mut copy);
    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        let (t, r) = timed4::<{ nr::GRANT_TABLE_OP }>(u64::from(gntop::COPY), copy_arg, 1, 0);
        if r != 0 || copy.status != gntst::OKAY {
            return Err(alloc::format!("copy returned {r}, status {}", copy.status));
        }
        if i >= WARMUP {
            s.push(t);
        }
    }
    print("grant.copy_4k", &mut s)?;

    // grant.map_unmap: our own grant, mapped where a scratch page was (so its L1 exists).
    let gref = gnttab::grant_access(me, a.mfn, false).map_err(err("grant"))?;
    let scratch = mm::alloc_page().map_err(err("alloc"))?;
    mm::map_page(MAP_VA, scratch.mfn, pt::PAGE_KERNEL | pt::NX).map_err(err("map scratch"))?;
    let mut map = GnttabMapGrantRef {
        host_addr: MAP_VA,
        flags: gntmap::HOST_MAP,
        ref_: gref,
        dom: me,
        ..Default::default()
    };
    let mut unmap = GnttabUnmapGrantRef { host_addr: MAP_VA, ..Default::default() };
    let (map_arg, unmap_arg) = (hypercall::ptr_mut(&mut map), hypercall::ptr_mut(&mut unmap));
    let mut s = samples(iters)?;
    for i in 0..iters + WARMUP {
        let (t1, r1) = timed4::<{ nr::GRANT_TABLE_OP }>(u64::from(gntop::MAP_GRANT_REF), map_arg, 1, 0);
        if r1 != 0 || map.status != gntst::OKAY {
            return Err(alloc::format!("map returned {r1}, status {}", map.status));
        }
        unmap.handle = map.handle;
        let (t2, r2) = timed4::<{ nr::GRANT_TABLE_OP }>(u64::from(gntop::UNMAP_GRANT_REF), unmap_arg, 1, 0);
        if r2 != 0 || unmap.status != gntst::OKAY {
            return Err(alloc::format!("unmap returned {r2}, status {}", unmap.status));
        }
        if i >= WARMUP {
            s.push(t1.saturating_add(t2));
        }
    }
    print("grant.map_unmap", &mut s)?;
    let _ = gnttab::end_access(gref);
    Ok(())
}
