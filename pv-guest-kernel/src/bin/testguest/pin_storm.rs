//! `pin-storm`: the hostile page-table workload of issue 9, finding 4 (XSA-45 class). The
//! guest builds one L4 over `l1s=` full L1s (each mapping one data page read-only 512 times),
//! then issues `calls=` multicall entries, each an `mmuext_op` of `pairs=` ×
//! (`PIN_L4_TABLE`, `UNPIN_TABLE`) of that L4, `rounds=` times, and with `seconds=` more
//! rounds until that much time has passed since the storm started (so that a neighbour's work
//! fits inside the storm however fast the hypervisor gets). Each pass validates or tears down
//! the whole tree; the hypervisor must do it in bounded, preemptible steps so that other
//! domains (dom0 serving a disk) keep running.
//!
//! It prints `pin-storm: key=value` lines: the longest page-table operation the hypervisor
//! saw (`longest_op`, TSC ticks, from `ARCH_DEBUG`: the longest stretch the storm kept
//! interrupts off), the longest round as the guest saw it (`longest_round`: one multicall end
//! to end, continuations included — with `calls=1 pairs=1` what a single pin and unpin cost,
//! i.e. the stretch a non-preemptible hypervisor would spend with interrupts off), and the two
//! as `BENCH` lines `mmu.pin_storm_longest_op` and `mmu.pin_storm_round`.

use alloc::vec::Vec;
use hypercall_abi::hypercall::{debug, nr};
use hypercall_abi::xen::{mmuext, uvmf, MmuextOp, MulticallEntry};
use hypercall_abi::DomId;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{cmdline, hypercall, println, time};

type Failure = alloc::string::String;

fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads the time-stamp counter, which PV guests may read.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes entry `i` of the page `p` (ours, mapped writable, not a page table yet).
fn write(p: &mm::Page, i: usize, v: u64) {
    // SAFETY: the page is ours and mapped writable at `p.va`; `i` < 512.
    unsafe { ((p.va + i as u64 * 8) as *mut u64).write_volatile(v) }
}

/// The tree: L4 -> L3 -> L2s -> `l1s` L1s, every table read-only in the direct map.
fn build(l1s: usize, data: hypercall_abi::Mfn) -> Result<(mm::Page, Vec<mm::Page>), Failure> {
    let page = || mm::alloc_page().map_err(|e| alloc::format!("out of pages: {e:?}"));
    let (l4, l3) = (page()?, page()?);
    let mut tables = Vec::new();
    let mut l2 = None;
    for k in 0..l1s {
        if k % pt::ENTRIES == 0 {
            let p = page()?;
            write(&l3, k / pt::ENTRIES, pt::make(p.mfn, pt::PAGE_TABLE));
            tables.push(p);
            l2 = Some(p);
        }
        let l1 = page()?;
        for i in 0..pt::ENTRIES {
            write(&l1, i, pt::make(data, pt::PAGE_KERNEL_RO));
        }
        let l2 = l2.as_ref().ok_or("no L2")?;
        write(l2, k % pt::ENTRIES, pt::make(l1.mfn, pt::PAGE_TABLE));
        tables.push(l1);
    }
    write(&l4, 0, pt::make(l3.mfn, pt::PAGE_TABLE));
    tables.push(l3);
    for p in tables.iter().chain([&l4]) {
        let r = hypercall::update_va_mapping(p.va, pt::make(p.mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG);
        if r != 0 {
            return Err(alloc::format!("cannot make a table read-only: {r}"));
        }
    }
    Ok((l4, tables))
}

fn storm(cmd: &str) -> Result<(u64, u64, usize), Failure> {
    let arg_from = |k, d, min, max| {
        cmdline::get_u64(cmd, k, d, min, max).map_err(|e| alloc::format!("bad {k}= ({e:?})"))
    };
    let arg = |k, d, max| arg_from(k, d, 1, max);
    let l1s = arg("l1s", 2048, 16384)? as usize;
    let pairs = arg("pairs", 2, 256)? as usize;
    let calls = arg("calls", 4, 64)? as usize;
    let rounds = arg("rounds", 1, 1000)?;
    let seconds = arg_from("seconds", 0, 0, 600)?;
    let data = mm::alloc_page().map_err(|e| alloc::format!("no data page: {e:?}"))?;
    let (l4, _tables) = build(l1s, data.mfn)?;
    let ops: Vec<MmuextOp> = (0..pairs)
        .flat_map(|_| {
            [
                MmuextOp { cmd: mmuext::PIN_L4_TABLE, _pad: 0, arg1: l4.mfn.0, arg2: 0 },
                MmuextOp { cmd: mmuext::UNPIN_TABLE, _pad: 0, arg1: l4.mfn.0, arg2: 0 },
            ]
        })
        .collect();
    let self_ = u64::from(DomId::SELF.0);
    println!("pin-storm: started l1s={l1s} pairs={pairs} calls={calls} rounds={rounds} seconds={seconds}");
    let _ = hypercall::debug_op(debug::LONGEST_MM_OP, 0);
    let until = time::now_ns() + seconds * 1_000_000_000;
    let mut longest_round = 0;
    let mut round = 0;
    while round < rounds || time::now_ns() < until {
        let mut mc: Vec<MulticallEntry> = (0..calls)
            .map(|_| MulticallEntry {
                op: nr::MMUEXT_OP,
                result: u64::MAX,
                args: [ops.as_ptr() as u64, ops.len() as u64, 0, self_, 0, 0],
            })
            .collect();
        let t = rdtsc();
        let r = hypercall::call2::<{ nr::MULTICALL }>(mc.as_mut_ptr() as u64, mc.len() as u64);
        longest_round = longest_round.max(rdtsc() - t);
        if r != 0 {
            return Err(alloc::format!("round {round}: multicall returned {r}"));
        }
        if let Some((i, e)) = mc.iter().enumerate().find(|(_, e)| e.result != 0) {
            return Err(alloc::format!("round {round}: entry {i} returned {}", e.result as i64));
        }
        round += 1;
    }
    let longest_op = hypercall::debug_op(debug::LONGEST_MM_OP, 0);
    if longest_op <= 0 {
        return Err(alloc::format!("LONGEST_MM_OP returned {longest_op}"));
    }
    Ok((longest_op as u64, longest_round, 2 * pairs * calls * round as usize))
}

fn bench_line(name: &str, v: u64) {
    println!("BENCH name={name} unit=tsc n=1 min={v} median={v} p99={v}");
}

pub fn run(cmd: &str) {
    match storm(cmd) {
        Ok((longest_op, longest_round, passes)) => {
            println!("pin-storm: longest_op={longest_op} longest_round={longest_round} passes={passes}");
            bench_line("mmu.pin_storm_longest_op", longest_op);
            bench_line("mmu.pin_storm_round", longest_round);
            println!("TEST pin-storm PASS {passes} validations and teardowns of the tree");
        }
        Err(e) => println!("TEST pin-storm FAIL {e}"),
    }
}
