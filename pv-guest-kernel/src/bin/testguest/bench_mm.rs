//! `bench-mm`: the cost of the page-table hypercalls, measured as `bench-null` measures the
//! null hypercall (`rdtsc`, the call through the hypercall page, `rdtsc`; samples in a
//! `Vec<u32>`, events masked) and printed as `BENCH` lines:
//!
//! * `mmu.update_one` — one `MMU_NORMAL_PT_UPDATE` of an L1 entry, alternately mapping a
//!   data page writable and clearing the entry (`pdone` NULL);
//! * `mmu.update_batch512` — one `mmu_update` of 512 requests filling (or clearing) a whole
//!   L1, alternately; each sample is the batch's time divided by 512 (per entry);
//! * `mmu.update_va_mapping` — `update_va_mapping` of one address with `UVMF_INVLPG`,
//!   alternately mapping and unmapping;
//! * `mmu.pin_l4` — `mmuext_op(PIN_L4_TABLE)` of a prepared L4 whose tree is one L3, one L2
//!   and one full L1 (512 read-only entries): validating the four tables and taking their
//!   type references;
//! * `mmu.unpin_l4` — the `UNPIN_TABLE` that follows each pin: tearing the same tree down.
//!
//! `iters=<n>` (default 100 000) sets the sample count of the single updates; the batch and
//! pin figures take at most 10 000 samples (`mm_iters=<n>` overrides).

use super::timing::{print, samples, timed4, Failure};
use alloc::vec::Vec;
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{mmuext, uvmf, MmuUpdate, MmuextOp};
use hypercall_abi::DomId;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{cmdline, events, hypercall, println};

/// Benchmark virtual addresses (each the start of its own L1).
const ONE_VA: u64 = pv_guest_kernel::va::TEST_PAGE_TABLES;
const BATCH_VA: u64 = ONE_VA + (2 << 20);
const WARMUP: usize = 100;

/// Runs `f` `WARMUP + iters` times, keeping the last `iters` timings; any non-zero result
/// stops the benchmark.
fn measure(name: &str, iters: usize, mut f: impl FnMut(usize) -> (u32, i64)) -> Result<Vec<u32>, Failure> {
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
    Ok(s)
}

fn update_one(iters: usize, l1e: u64, on: u64) -> Result<(), Failure> {
    let reqs = [MmuUpdate { ptr: l1e, val: on }, MmuUpdate { ptr: l1e, val: 0 }];
    let self_ = u64::from(DomId::SELF.0);
    let mut s = measure("mmu.update_one", iters, |i| {
        timed4::<{ nr::MMU_UPDATE }>(&reqs[i & 1] as *const MmuUpdate as u64, 1, 0, self_)
    })?;
    let mut done = 0u32;
    hypercall::mmu_update(&reqs[1..], &mut done, DomId::SELF);
    print("mmu.update_one", &mut s).map(drop)
}

fn update_batch(iters: usize, l1: u64, on: u64) -> Result<(), Failure> {
    let mut fill = Vec::new();
    let mut clear = Vec::new();
    for i in 0..pt::ENTRIES as u64 {
        fill.push(MmuUpdate { ptr: l1 + i * 8, val: on });
        clear.push(MmuUpdate { ptr: l1 + i * 8, val: 0 });
    }
    let self_ = u64::from(DomId::SELF.0);
    let mut s = measure("mmu.update_batch512", iters, |i| {
        let b = if i & 1 == 0 { &fill } else { &clear };
        let (t, r) = timed4::<{ nr::MMU_UPDATE }>(b.as_ptr() as u64, b.len() as u64, 0, self_);
        (t / pt::ENTRIES as u32, r)
    })?;
    let mut done = 0u32;
    hypercall::mmu_update(&clear, &mut done, DomId::SELF);
    print("mmu.update_batch512", &mut s).map(drop)
}

fn update_va(iters: usize, on: u64) -> Result<(), Failure> {
    let mut s = measure("mmu.update_va_mapping", iters, |i| {
        let val = if i & 1 == 0 { on } else { 0 };
        timed4::<{ nr::UPDATE_VA_MAPPING }>(ONE_VA, val, uvmf::INVLPG, 0)
    })?;
    print("mmu.update_va_mapping", &mut s).map(drop)
}

/// Four zeroed pages made into an L4 -> L3 -> L2 -> L1 tree (512 read-only entries mapping
/// `data`), read-only in the direct map, not yet validated.
pub fn prepare_tree(data: hypercall_abi::Mfn) -> Result<[mm::Page; 4], Failure> {
    let mut pages = Vec::new();
    for _ in 0..4 {
        pages.push(mm::alloc_page().map_err(|e| alloc::format!("pin tree: {e}"))?);
    }
    let [l4, l3, l2, l1] = [pages[0], pages[1], pages[2], pages[3]];
    let write = |p: &mm::Page, i: usize, v: u64| {
        // SAFETY: the page is ours, mapped writable, not yet a page table.
        unsafe { ((p.va + i as u64 * 8) as *mut u64).write_volatile(v) }
    };
    for i in 0..pt::ENTRIES {
        write(&l1, i, pt::make(data, pt::PAGE_KERNEL_RO));
    }
    write(&l2, 0, pt::make(l1.mfn, pt::PAGE_TABLE));
    write(&l3, 0, pt::make(l2.mfn, pt::PAGE_TABLE));
    write(&l4, 0, pt::make(l3.mfn, pt::PAGE_TABLE));
    for p in [&l4, &l3, &l2, &l1] {
        let r = hypercall::update_va_mapping(p.va, pt::make(p.mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG);
        if r != 0 {
            return Err(alloc::format!("pin tree: cannot make a table read-only: {r}"));
        }
    }
    Ok([l4, l3, l2, l1])
}

fn pin_unpin(iters: usize, data: hypercall_abi::Mfn) -> Result<(), Failure> {
    let tree = prepare_tree(data)?;
    let ops = [
        MmuextOp { cmd: mmuext::PIN_L4_TABLE, _pad: 0, arg1: tree[0].mfn.0, arg2: 0 },
        MmuextOp { cmd: mmuext::UNPIN_TABLE, _pad: 0, arg1: tree[0].mfn.0, arg2: 0 },
    ];
    let self_ = u64::from(DomId::SELF.0);
    // Pin on even iterations, unpin on odd ones (WARMUP is even, so sample j has the parity
    // of its iteration), ending unpinned.
    const _: () = assert!(WARMUP.is_multiple_of(2));
    let r = measure("mmu.pin_l4", 2 * iters, |i| {
        timed4::<{ nr::MMUEXT_OP }>(&ops[i & 1] as *const MmuextOp as u64, 1, 0, self_)
    });
    for p in &tree {
        let w = hypercall::update_va_mapping(p.va, pt::make(p.mfn, pt::PAGE_KERNEL), uvmf::INVLPG);
        if w == 0 {
            let _ = mm::free_page(p.pfn);
        }
    }
    let r = r?;
    let mut pins: Vec<u32> = r.iter().step_by(2).copied().collect();
    let mut unpins: Vec<u32> = r.iter().skip(1).step_by(2).copied().collect();
    print("mmu.pin_l4", &mut pins)?;
    print("mmu.unpin_l4", &mut unpins).map(drop)
}

pub fn run(cmd: &str) {
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => {
            println!("TEST bench-mm FAIL bad iters= ({e:?})");
            return;
        }
    };
    let mm_iters = match cmdline::get_u64(cmd, "mm_iters", iters.min(10_000) as u64, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => {
            println!("TEST bench-mm FAIL bad mm_iters= ({e:?})");
            return;
        }
    };
    let Ok(data) = mm::alloc_page() else {
        println!("TEST bench-mm FAIL no page");
        return;
    };
    let (Ok(one), Ok(batch)) = (mm::entry_maddr(ONE_VA, 1), mm::entry_maddr(BATCH_VA, 1)) else {
        println!("TEST bench-mm FAIL cannot build the benchmark page tables");
        return;
    };
    let batch_l1 = batch & !0xfff;
    let on = pt::make(data.mfn, pt::PAGE_KERNEL);
    let g = events::mask_upcalls();
    let result = update_one(iters, one, on)
        .and_then(|()| update_batch(mm_iters, batch_l1, on))
        .and_then(|()| update_va(iters, on))
        .and_then(|()| pin_unpin(mm_iters, data.mfn));
    drop(g);
    let _ = hypercall::update_va_mapping(ONE_VA, 0, uvmf::INVLPG);
    let _ = mm::free_page(data.pfn);
    match result {
        Ok(()) => println!("TEST bench-mm PASS {iters} single updates, {mm_iters} batches and pin pairs"),
        Err(e) => println!("TEST bench-mm FAIL {e}"),
    }
}
