//! `bench-peer`: the rest of the peer set measured on both microvisor and Xen 4.17
//! (`cargo xtask bench --peer xen`), timed like every benchmark here (`timing::timed4`,
//! events masked, 100 warm-up calls). Each needs only the hypervisor, so it runs as Xen's
//! dom0 as well as a microvisor domU:
//!
//! * `hypercall.get_features` — `xen_version(XENVER_get_features, &fi)`: a general call with
//!   a copy in and a copy out;
//! * `evtchn.status` — `EVTCHNOP_status` of a loopback interdomain port;
//! * `mmu.pin_l1` / `mmu.unpin_l1` — `PIN_L1_TABLE` of an L1 of 512 read-only entries, and the
//!   `UNPIN_TABLE` that follows it;
//! * `mmu.tlb_flush_local`, `mmu.invlpg_local` — the two local flushes of `mmuext_op`;
//! * `hypercall.multicall16` — one `multicall` of 16 `xen_version(XENVER_version)` calls;
//! * `sched.set_timer_op` — arming the one-shot timer 10 s ahead;
//! * `sched.yield` — `SCHEDOP_yield` with nothing else to run.

use super::timing::{print, samples, timed4, Failure};
use alloc::vec::Vec;
use hypercall_abi::event_channel::{op as evtop, EvtchnStatus};
use hypercall_abi::hypercall::nr;
use hypercall_abi::version::{op as verop, XenFeatureInfo};
use hypercall_abi::xen::{mmuext, uvmf, MmuextOp, MulticallEntry};
use hypercall_abi::{sched, DomId};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

const WARMUP: usize = 100;

/// Times `f` over `WARMUP + iters` calls, keeps the last `iters`, and prints the figures;
/// any result but 0 stops the benchmark.
fn bench(name: &str, iters: usize, mut f: impl FnMut(usize) -> (u32, i64)) -> Result<(), Failure> {
    let mut s = samples(iters)?;
    for i in 0..WARMUP + iters {
        let (t, r) = f(i);
        if r != 0 {
            return Err(alloc::format!("{name}: iteration {i} returned {r}"));
        }
        if i >= WARMUP {
            s.push(t);
        }
    }
    print(name, &mut s).map(drop)
}

pub fn run(cmd: &str) {
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => return println!("TEST bench-peer FAIL bad iters= ({e:?})"),
    };
    let g = events::mask_upcalls();
    let r = measure(iters);
    drop(g);
    match r {
        Ok(()) => println!("TEST bench-peer PASS"),
        Err(e) => println!("TEST bench-peer FAIL {e}"),
    }
}

fn measure(iters: usize) -> Result<(), Failure> {
    let err = |what: &'static str| move |e| alloc::format!("{what}: {e}");
    // The expensive table operations take fewer samples, as bench-mm's do.
    let few = iters.min(10_000);

    let mut fi = XenFeatureInfo { submap_idx: 0, submap: 0 };
    let fi_arg = hypercall::ptr_mut(&mut fi);
    bench("hypercall.get_features", iters, |_| {
        timed4::<{ nr::XEN_VERSION }>(u64::from(verop::GET_FEATURES), fi_arg, 0, 0)
    })?;

    let rx = events::alloc_unbound(DomId::SELF).map_err(err("alloc_unbound"))?;
    let tx = events::bind_interdomain(DomId::SELF, rx).map_err(err("bind_interdomain"))?;
    let mut st = EvtchnStatus { dom: DomId::SELF, port: tx, ..Default::default() };
    let st_arg = hypercall::ptr_mut(&mut st);
    let r = bench("evtchn.status", iters, |_| {
        timed4::<{ nr::EVENT_CHANNEL_OP }>(u64::from(evtop::STATUS), st_arg, 0, 0)
    });
    let _ = events::close(tx);
    let _ = events::close(rx);
    r?;

    pin_unpin_l1(few)?;

    let self_ = u64::from(DomId::SELF.0);
    let flush = MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, _pad: 0, arg1: 0, arg2: 0 };
    bench("mmu.tlb_flush_local", iters, |_| {
        timed4::<{ nr::MMUEXT_OP }>(hypercall::ptr(&flush), 1, 0, self_)
    })?;
    // A mapped address of ours: the first page of the kernel image.
    let invlpg =
        MmuextOp { cmd: mmuext::INVLPG_LOCAL, _pad: 0, arg1: pv_guest_kernel::entry::VIRT_BASE, arg2: 0 };
    bench("mmu.invlpg_local", iters, |_| timed4::<{ nr::MMUEXT_OP }>(hypercall::ptr(&invlpg), 1, 0, self_))?;

    let null =
        MulticallEntry { op: nr::XEN_VERSION, result: 0, args: [u64::from(verop::VERSION), 0, 0, 0, 0, 0] };
    let mut calls = [null; 16];
    let calls_arg = calls.as_mut_ptr() as u64;
    bench("hypercall.multicall16", iters, |_| {
        timed4::<{ nr::MULTICALL }>(calls_arg, calls.len() as u64, 0, 0)
    })?;
    if calls.iter().any(|c| c.result == 0 || c.result > u64::from(u32::MAX)) {
        return Err(alloc::format!("multicall: a xen_version result is {:#x}", calls[0].result));
    }

    let later = time::now_ns() + 10_000_000_000;
    let r = bench("sched.set_timer_op", iters, |_| timed4::<{ nr::SET_TIMER_OP }>(later, 0, 0, 0));
    // Through the runtime, so that it knows no deadline is armed any more.
    let _ = hypercall::set_timer_op(0);
    r?;

    bench("sched.yield", iters, |_| timed4::<{ nr::SCHED_OP }>(u64::from(sched::op::YIELD), 0, 0, 0))
}

/// `PIN_L1_TABLE` / `UNPIN_TABLE` alternately on one L1 of 512 read-only entries.
fn pin_unpin_l1(iters: usize) -> Result<(), Failure> {
    let err = |what: &'static str| move |e| alloc::format!("pin L1: {what}: {e}");
    let data = mm::alloc_page().map_err(err("alloc"))?;
    let l1 = mm::alloc_page().map_err(err("alloc"))?;
    for i in 0..pt::ENTRIES {
        // SAFETY: the page is ours, mapped writable, not yet a page table.
        unsafe { ((l1.va + i as u64 * 8) as *mut u64).write_volatile(pt::make(data.mfn, pt::PAGE_KERNEL_RO)) }
    }
    let ro = hypercall::update_va_mapping(l1.va, pt::make(l1.mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG);
    if ro != 0 {
        return Err(alloc::format!("pin L1: cannot make the table read-only: {ro}"));
    }
    let ops = [
        MmuextOp { cmd: mmuext::PIN_L1_TABLE, _pad: 0, arg1: l1.mfn.0, arg2: 0 },
        MmuextOp { cmd: mmuext::UNPIN_TABLE, _pad: 0, arg1: l1.mfn.0, arg2: 0 },
    ];
    let self_ = u64::from(DomId::SELF.0);
    // Pin on even iterations, unpin on odd ones (WARMUP is even), ending unpinned.
    const _: () = assert!(WARMUP.is_multiple_of(2));
    let mut s = samples(2 * iters)?;
    let mut failed = None;
    let mut pinned = false;
    for i in 0..WARMUP + 2 * iters {
        let (t, r) = timed4::<{ nr::MMUEXT_OP }>(hypercall::ptr(&ops[i & 1]), 1, 0, self_);
        if r != 0 {
            failed = Some(alloc::format!("pin L1: iteration {i} returned {r}"));
            break;
        }
        pinned = i & 1 == 0;
        if i >= WARMUP {
            s.push(t);
        }
    }
    if pinned {
        let _ = hypercall::mmuext_op(&ops[1..], &mut 0, DomId::SELF);
    }
    let w = hypercall::update_va_mapping(l1.va, pt::make(l1.mfn, pt::PAGE_KERNEL), uvmf::INVLPG);
    if w == 0 {
        let _ = mm::free_page(l1.pfn);
    }
    let _ = mm::free_page(data.pfn);
    if let Some(f) = failed {
        return Err(f);
    }
    let mut pins: Vec<u32> = s.iter().step_by(2).copied().collect();
    let mut unpins: Vec<u32> = s.iter().skip(1).step_by(2).copied().collect();
    print("mmu.pin_l1", &mut pins)?;
    print("mmu.unpin_l1", &mut unpins).map(drop)
}
