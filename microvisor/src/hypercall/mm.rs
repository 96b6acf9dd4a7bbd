//! Page-table hypercalls: `mmu_update`, `mmuext_op`, `update_va_mapping[_otherdomain]` and
//! `multicall`. Requests are copied in (a bounded batch at a time), handed to the frame
//! table's validator (`mm::mmu`), and long batches continue themselves with Xen's encoding
//! (`count | MMU_UPDATE_PREEMPTED`, progress in `*pdone`), so one guest cannot hold the CPU.

use super::{dispatch_in_place, Hc};
use crate::hv::{set_m2p, Hypervisor};
use crate::mm::frame_table::FrameTable;
use crate::mm::mmu::{self, MmuCtx};
use crate::mm::pagetable::L1Owners;
use crate::mm::ptwr;
use crate::mm::tlb::Flush;
use crate::platform::Platform;
use alloc::vec::Vec;
use hypercall_abi::xen::{MmuUpdate, MmuextOp, MulticallEntry};
use hypercall_abi::{DomId, Errno};
use zerocopy::{FromZeros, IntoBytes};

/// Bit of `count` that marks a continuation (`MMU_UPDATE_PREEMPTED`).
pub const MMU_UPDATE_PREEMPTED: u32 = 1 << 31;
/// Requests handled per call before continuing.
pub const BATCH: u32 = 512;
/// Requests copied onto the stack rather than the heap.
const INLINE_BATCH: usize = 8;
/// Multicall entries handled per call before continuing.
pub const MULTICALL_BATCH: u64 = 64;

/// Runs `f` with the frame table, memory and the running vCPU's MMU context, then writes back
/// the vCPU's page-table bases and the flush `f` reports.
fn with_mmu<P: Platform, R>(
    hv: &mut Hypervisor<P>,
    f: impl FnOnce(&mut FrameTable, &P::Mem, &mut MmuCtx<'_>) -> (R, Flush),
) -> R {
    let r = hv.current();
    // One look at the running domain and vCPU for the context and the write-back: the frame
    // table, memory and domains are separate fields, borrowed side by side.
    let Hypervisor { frames, plat, domains, m2p_base, .. } = &mut *hv;
    let d = domains.get_mut(&r.domid).expect("running domain exists");
    let privileged = d.privileged;
    let v = d.vcpu_mut(r.vcpu).expect("running vCPU exists");
    let (k, u) = (v.kernel_l4, v.user_l4);
    let (m2p_base, max_mfn) = (*m2p_base, frames.max_mfn());
    let mem = plat.mem();
    let mut m2p = |mfn, pfn| set_m2p(mem, m2p_base, max_mfn, mfn, pfn);
    let mut ctx = MmuCtx { domid: r.domid, privileged, kernel_l4: Some(k), user_l4: u, set_m2p: &mut m2p };
    // Page-table work is preemptible (XSA-45): bounded per call, inside a multicall per
    // multicall.
    let started = frames.begin_preemptible_at(|| plat.tsc());
    let (out, flush) = f(frames, mem, &mut ctx);
    if started {
        frames.end_preemptible_at(|| plat.tsc());
    }
    let (nk, nu) = (ctx.kernel_l4, ctx.user_l4);
    if let Some(nk) = nk {
        v.kernel_l4 = nk;
    }
    v.user_l4 = nu;
    if nk != Some(k) || nu != u {
        hv.mark_hw_dirty();
    }
    hv.request_flush(flush);
    if hv.frames.l1tf_violation_pending() {
        crash_l1tf_violator(hv);
    }
    out
}

/// [`with_mmu`] for work on the caller's own tables that needs no MMU context (no M2P
/// writer, no base pointer to change): `f` gets the frame table and memory inside the same
/// preemptible operation, the flush it reports is requested and an L1TF-unsafe entry crashes
/// the domain, as after `with_mmu`. The context and its write-back are what it saves.
fn with_frames<P: Platform, R>(
    hv: &mut Hypervisor<P>,
    f: impl FnOnce(&mut FrameTable, &P::Mem) -> (R, Flush),
) -> R {
    let Hypervisor { frames, plat, .. } = &mut *hv;
    let started = frames.begin_preemptible_at(|| plat.tsc());
    let (out, flush) = f(frames, plat.mem());
    if started {
        frames.end_preemptible_at(|| plat.tsc());
    }
    hv.request_flush(flush);
    if hv.frames.l1tf_violation_pending() {
        crash_l1tf_violator(hv);
    }
    out
}

impl<P: Platform> Hypervisor<P> {
    /// Writable page tables (Xen's `ptwr`), for the page-fault path (`emulate::ptwr_write`):
    /// the L1 entry a write fault at `va` with `error_code`, taken by the running vCPU on its
    /// current page tables, hits through a read-only mapping of one of its domain's own live
    /// L1s; `None` if the fault is the guest's.
    pub fn ptwr_target(&self, va: u64, error_code: u64) -> Option<ptwr::PtwrTarget> {
        let (d, l4) = (self.current().domid, self.cur_vcpu().current_l4());
        ptwr::target(&self.frames, self.plat.mem(), d, l4, va, error_code)
    }

    /// Applies the store the faulting instruction makes (decoded by the trap path: the low
    /// `bytes` of `val`, compared first with `expected` for `cmpxchg`) to the entry `at`,
    /// validated as `mmu_update` validates it; the flush a reused frame may owe is requested
    /// and an L1TF-unsafe entry crashes the domain, as after `mmu_update`. `Err`: the guest
    /// gets its page fault.
    pub fn ptwr_store(
        &mut self,
        at: ptwr::PtwrTarget,
        val: u64,
        bytes: usize,
        expected: Option<u64>,
    ) -> Result<ptwr::PtwrOutcome, Errno> {
        let d = self.current().domid;
        let r = ptwr::emulated_update(&mut self.frames, self.plat.mem(), d, at, val, bytes, expected);
        if self.frames.take_flush_pending() {
            self.request_flush(Flush::All);
        }
        if self.frames.l1tf_violation_pending() {
            crash_l1tf_violator(self);
        }
        r
    }
}

/// What a batch asked of the hypervisor beyond the frame table: a cache flush, a new LDT.
#[cold]
fn after_batch<P: Platform>(hv: &mut Hypervisor<P>, o: mmu::BatchOutcome) {
    if o.cache_flush {
        hv.plat.wbinvd();
    }
    if let Some((base, entries)) = o.ldt {
        super::desc::set_ldt(hv, base, entries);
    }
}

/// Crashes the domain an update found breaking the L1TF rule (XSA-273).
#[cold]
fn crash_l1tf_violator<P: Platform>(hv: &mut Hypervisor<P>) {
    if let Some(v) = hv.frames.take_l1tf_violation() {
        hv.crash_domain(v.domid, format_args!("L1TF-vulnerable L{}e {:#018x}", v.level, v.pte));
    }
}

/// Reads `*pdone` (a `u32`) when continuing.
fn read_done<P: Platform>(hv: &Hypervisor<P>, pdone: u64) -> u32 {
    if pdone == 0 {
        0
    } else {
        hv.guest().read_obj::<u32>(pdone).unwrap_or(0)
    }
}

/// The batch loop shared by `mmu_update` and `mmuext_op`: copy in up to [`BATCH`] requests of
/// type `T`, let `op` process them, account `*pdone` and continue if requests remain.
fn batch<P: Platform, T: zerocopy::FromBytes + zerocopy::IntoBytes>(
    hv: &mut Hypervisor<P>,
    a: [u64; 5],
    op: impl FnOnce(&mut FrameTable, &P::Mem, &mut MmuCtx<'_>, &[T]) -> mmu::BatchOutcome,
) -> Hc {
    let [ureqs, count, pdone, foreigndom, a5] = a;
    let mut count = count as u32;
    let mut done = 0;
    if count & MMU_UPDATE_PREEMPTED != 0 {
        count &= !MMU_UPDATE_PREEMPTED;
        done = read_done(hv, pdone);
    }
    let want = count.min(BATCH) as usize;
    // Short batches are copied onto the stack (the common single request into one value,
    // so nothing larger is zeroed for it); longer ones into the heap, where a failed
    // allocation is the guest's -ENOMEM, never a panic.
    let mut one = T::new_zeroed();
    let mut small: [T; INLINE_BATCH];
    let mut heap: Vec<T> = Vec::new();
    let buf: &mut [T] = if want <= 1 {
        &mut core::slice::from_mut(&mut one)[..want]
    } else if want <= INLINE_BATCH {
        small = core::array::from_fn(|_| T::new_zeroed());
        &mut small[..want]
    } else {
        if heap.try_reserve_exact(want).is_err() {
            return Hc::Ret(Errno::ENOMEM.to_ret());
        }
        heap.resize_with(want, T::new_zeroed);
        &mut heap[..]
    };
    // One copy for the whole batch; only if it faults, one request at a time to find where
    // the good ones end (those are still carried out, as Xen's per-request copies do).
    let (mut got, mut fault) = (want, false);
    if hv.guest().read(ureqs, buf.as_mut_bytes()).is_err() {
        got = 0;
        for (i, slot) in buf.iter_mut().enumerate() {
            match hv.guest().read_elem::<T>(ureqs, i as u64) {
                Ok(r) => {
                    *slot = r;
                    got += 1;
                }
                Err(_) => {
                    fault = true;
                    break;
                }
            }
        }
    }
    let reqs = &buf[..got];
    let outcome = with_mmu(hv, |ft, mem, ctx| {
        // Called with no requests too: Xen checks the owner domain before it reads any
        // (`-ESRCH` for one that does not exist, even in an empty batch).
        let o = Some(op(ft, mem, ctx, reqs));
        let flush = o.map_or(Flush::None, |o| o.flush);
        (o, flush)
    });
    if let Some(o) = outcome.filter(|o| o.cache_flush || o.ldt.is_some()) {
        after_batch(hv, o);
    }
    let (i, result) = outcome.map_or((0, Ok(())), |o| (o.done, o.result));
    let fault = fault && i == reqs.len();
    batch_end::<P, T>(hv, [ureqs, u64::from(count), pdone, foreigndom, a5], done, i, result, fault)
}

/// The end of a batch call (`a` with the request count left before it), `i` of its requests
/// done, with `result`: `*pdone` becomes `done + i`, then the error, `-EFAULT` if the copy-in
/// of the next request faulted (`fault`), or a continuation with the rest.
fn batch_end<P: Platform, T>(
    hv: &mut Hypervisor<P>,
    a: [u64; 5],
    done: u32,
    i: usize,
    result: Result<(), Errno>,
    fault: bool,
) -> Hc {
    let [ureqs, count, pdone, foreigndom, a5] = a;
    let count = count as u32;
    let done = done.wrapping_add(i as u32);
    if pdone != 0 && hv.guest().write_obj(pdone, &done).is_err() {
        return Hc::Ret(Errno::EFAULT.to_ret());
    }
    if let Err(e) = result {
        return Hc::Ret(e.to_ret());
    }
    if fault {
        return Hc::Ret(Errno::EFAULT.to_ret());
    }
    if (i as u32) < count {
        let next = ureqs.wrapping_add(i as u64 * core::mem::size_of::<T>() as u64);
        return Hc::Continue([
            next,
            u64::from((count - i as u32) | MMU_UPDATE_PREEMPTED),
            pdone,
            foreigndom,
            a5,
        ]);
    }
    Hc::Ret(0)
}

/// `mmu_update(reqs, count, pdone, foreigndom)`.
pub fn mmu_update<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5]) -> Hc {
    let foreigndom = a[3] as u32;
    // One page-table update of the caller's own tables, what kernels issue most, needs
    // neither the batch's buffer nor the MMU context (`pt_update` reads only the frame table
    // and memory). Not while a preempted teardown waits: every page-table call finishes
    // that first. A request that faults on its copy-in or is no page-table update goes to
    // the batch, which gives the same results for it.
    if a[1] as u32 == 1 && foreigndom == u32::from(DomId::SELF.0) && hv.frames.deferred_len() == 0 {
        if let Ok(req) = hv.guest().read_obj::<MmuUpdate>(a[0]) {
            if mmu::is_pt_update(&req) {
                return update_own(hv, a, &req);
            }
        }
    }
    batch::<P, MmuUpdate>(hv, a, |ft, mem, ctx, reqs| {
        mmu::mmu_update(ft, mem, ctx, reqs, foreigndom, BATCH as usize)
    })
}

/// [`mmu_update`] of the one page-table update `req` (the only request of `a`, on the
/// caller's own tables with its own frames), with the batch's preemption, L1TF rule, result,
/// `*pdone` and continuation ([`batch_end`]).
fn update_own<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5], req: &MmuUpdate) -> Hc {
    let owners = L1Owners::local(hv.current().domid);
    // (A flush the frame table owes is requested after every hypercall.)
    let r = with_frames(hv, |ft, mem| (mmu::pt_update(ft, mem, req, owners), Flush::None));
    let (i, result) = match r {
        Ok(()) => (1, Ok(())),
        // Preempted: the continuation redoes it, as the batch's would.
        Err(Errno::ERESTART) => (0, Ok(())),
        Err(e) => (0, Err(e)),
    };
    batch_end::<P, MmuUpdate>(hv, a, 0, i, result, false)
}

/// `mmuext_op(ops, count, pdone, foreigndom)`.
pub fn mmuext_op<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5]) -> Hc {
    let foreigndom = DomId(a[3] as u16);
    // One TLB command on the caller's own behalf, what kernels issue most, needs neither the
    // batch nor the frame table: its flush goes straight to the exit work (and from there to
    // the hypercall's return), with `*pdone` and the result as the batch would give them.
    // Not while a preempted teardown waits: every page-table call finishes that first.
    let [ops, count, pdone, ..] = a;
    if count == 1 && foreigndom == DomId::SELF && hv.frames.deferred_len() == 0 {
        if let Ok(op) = hv.guest().read_obj::<MmuextOp>(ops) {
            if let Some(flush) = mmu::tlb_op_flush(&op, true) {
                if let Ok(f) = flush {
                    hv.request_flush(f);
                }
                if pdone != 0 && hv.guest().write_obj(pdone, &u32::from(flush.is_ok())).is_err() {
                    return Hc::Ret(Errno::EFAULT.to_ret());
                }
                return Hc::Ret(flush.map_or_else(|e| e.to_ret(), |_| 0));
            }
        }
    }
    batch::<P, MmuextOp>(hv, a, |ft, mem, ctx, ops| {
        mmu::mmuext_op(ft, mem, ctx, ops, foreigndom, BATCH as usize)
    })
}

/// An emulated `mov %reg, %cr3` from the guest kernel: `mfn` becomes its kernel base table,
/// exactly as `MMUEXT_NEW_BASEPTR` (Xen's `new_guest_cr3` serves both).
pub(crate) fn write_cr3<P: Platform>(hv: &mut Hypervisor<P>, mfn: hypercall_abi::Mfn) -> Result<(), Errno> {
    with_mmu(hv, |ft, mem, ctx| (mmu::new_baseptr(ft, mem, ctx, mfn), Flush::None))
}

/// `update_va_mapping(va, val, flags)`.
pub fn update_va_mapping<P: Platform>(
    hv: &mut Hypervisor<P>,
    va: u64,
    val: u64,
    flags: u64,
) -> Result<i64, Errno> {
    // On the caller's own behalf with its own frames: the entry, its owners and the kernel
    // page tables are all it needs (`with_frames`, not the whole MMU context).
    let owners = L1Owners::local(hv.current().domid);
    let kernel_l4 = Some(hv.cur_vcpu().kernel_l4);
    with_frames(hv, |ft, mem| match mmu::update_va_entry(ft, mem, kernel_l4, owners, va, val, flags) {
        Ok(f) => (Ok(0), f),
        Err(e) => (Err(e), Flush::None),
    })
}

/// `update_va_mapping_otherdomain(va, val, flags, domid)`.
pub fn update_va_mapping_otherdomain<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5]) -> Result<i64, Errno> {
    let [va, val, flags, domid, _] = a;
    with_mmu(hv, |ft, mem, ctx| {
        match mmu::update_va_mapping_otherdomain(ft, mem, ctx, va, val, flags, DomId(domid as u16)) {
            Ok(f) => (Ok(0), f),
            Err(e) => (Err(e), Flush::None),
        }
    })
}

/// `multicall(entries, nr)`: each entry's call runs as if made directly; its result goes into
/// the entry. Nested multicalls and `iret` are refused (XSA-213: `iret` would rewrite the
/// frame of the whole batch). A call that continues itself suspends the batch at that entry
/// with the call's updated arguments written back.
pub fn multicall<P: Platform>(hv: &mut Hypervisor<P>, entries: u64, count: u64) -> Hc {
    // One page-table work budget for all entries: the batch stops when it is spent.
    let started = hv.frames.begin_preemptible_at(|| hv.plat.tsc());
    let r = multicall_entries(hv, entries, count);
    if started {
        hv.frames.end_preemptible_at(|| hv.plat.tsc());
    }
    r
}

fn multicall_entries<P: Platform>(hv: &mut Hypervisor<P>, entries: u64, count: u64) -> Hc {
    let n = count.min(MULTICALL_BATCH);
    if n == 0 {
        return Hc::Ret(0);
    }
    // Each entry is copied in just before it runs (an earlier call may have changed it, as
    // under Xen), into the one buffer, and only its result goes back.
    let mut e = MulticallEntry::new_zeroed();
    let mut l4 = hv.cur_vcpu().current_l4();
    // `at`: the entry being run, a range the copy accepted (so nothing within it wraps).
    let mut at = entries;
    if let Err(err) = hv.guest_space(l4).read(at, e.as_mut_bytes()) {
        return Hc::Ret(err.to_ret());
    }
    let mut i = 0;
    loop {
        let args = e.args.first_chunk::<5>().expect("six arguments");
        // Nested multicalls and `iret` are refused by the dispatcher (`IN_MULTICALL`).
        let result = match dispatch_in_place::<P, true>(hv, e.op, args, None) {
            Hc::Ret(r) => r,
            Hc::Continue(newargs) => {
                e.args[..5].copy_from_slice(&newargs);
                if let Err(err) = hv.guest().write_elem(entries, i, &e) {
                    return Hc::Ret(err.to_ret());
                }
                let at = entries.wrapping_add(i * core::mem::size_of::<MulticallEntry>() as u64);
                return Hc::Continue([at, count - i, 0, 0, 0]);
            }
            Hc::FrameDone => Errno::EINVAL.to_ret(),
        };
        // The call may have changed the address space (or owe a flush): one look at it serves
        // this result and the next entry, between which nothing else runs.
        l4 = hv.current_l4_since(l4);
        let guest = hv.guest_space(l4);
        let result_at = at.wrapping_add(core::mem::offset_of!(MulticallEntry, result) as u64);
        if let Err(err) = guest.write_obj(result_at, &result) {
            return Hc::Ret(err.to_ret());
        }
        if !hv.caller_alive() {
            return Hc::Ret(0);
        }
        i += 1;
        if i == n {
            break;
        }
        if hv.frames.preempt_pending() {
            let at = entries.wrapping_add(i * core::mem::size_of::<MulticallEntry>() as u64);
            return Hc::Continue([at, count - i, 0, 0, 0]);
        }
        at = match at.checked_add(core::mem::size_of::<MulticallEntry>() as u64) {
            Some(next) => next,
            None => return Hc::Ret(Errno::EFAULT.to_ret()),
        };
        if let Err(err) = guest.read(at, e.as_mut_bytes()) {
            return Hc::Ret(err.to_ret());
        }
    }
    if count > MULTICALL_BATCH {
        let at = entries.wrapping_add(MULTICALL_BATCH * core::mem::size_of::<MulticallEntry>() as u64);
        return Hc::Continue([at, count - MULTICALL_BATCH, 0, 0, 0]);
    }
    Hc::Ret(0)
}
