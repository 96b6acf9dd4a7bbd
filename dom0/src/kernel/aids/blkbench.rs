//! dom0's own disk figures, the baseline the domU's are compared with: sequential reads and
//! writes and random 4 KiB reads straight through the virtio-blk driver.
//!
//! The I/O pattern is the one blkfront produces, so the domU/dom0 ratio measures the split
//! driver and not a different workload: requests of 11 pages (44 KiB, the most a blkif
//! request carries) or 4 KiB, with up to 32 in flight (a blkif ring's slots). Throughput is
//! sampled per run (a run = a fixed amount of I/O), so min/median/p99 describe run-to-run
//! spread; the BENCH line's samples are those per-run figures.

use crate::hw::dma::{self, DmaRegion};
use crate::hw::virtio_blk::{status, Op, SubmitError, VirtioBlk};
use alloc::vec::Vec;
use hypercall_abi::microvisor::bench::{Line, Stats};
use pv_guest_kernel::{println, time};

/// Sectors per sequential request: 11 pages.
pub const SEQ_SECTORS: u64 = 11 * 8;
/// Requests in flight.
pub const DEPTH: usize = 32;
/// Random reads per run.
pub const RAND_PER_RUN: usize = 512;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Bytes of sequential I/O per run.
    pub run_bytes: u64,
    pub runs: usize,
    /// Random-read runs.
    pub rand_runs: usize,
    /// First sector of the benchmark area, and its length in sectors.
    pub start: u64,
    /// Requests in flight at most.
    pub depth: usize,
    pub span: u64,
}

/// The DMA buffers: `DEPTH` slots of `SEQ_SECTORS` sectors in one machine-contiguous region.
struct Buffers {
    region: DmaRegion,
    /// Requests in flight at most (at most [`DEPTH`]).
    depth: usize,
}

impl Buffers {
    fn slot_ma(&self, i: usize) -> u64 {
        self.region.ma + i as u64 * SEQ_SECTORS * 512
    }
}

/// MiB/s for `bytes` in `ns` (at least 1).
pub fn mib_per_s(bytes: u64, ns: u64) -> u64 {
    (u128::from(bytes) * 1_000_000_000 / (u128::from(ns.max(1)) << 20)) as u64
}

/// Operations per second.
pub fn per_s(ops: u64, ns: u64) -> u64 {
    (u128::from(ops) * 1_000_000_000 / u128::from(ns.max(1))) as u64
}

/// Issues `n` requests of `sectors` each at the sectors `at(i)` with at most [`DEPTH`] in
/// flight; returns the elapsed time or the first error status.
fn stream(
    dev: &mut VirtioBlk,
    bufs: &Buffers,
    op: Op,
    n: usize,
    sectors: u64,
    mut at: impl FnMut(usize) -> u64,
) -> Result<u64, u8> {
    let mut free: Vec<usize> = (0..bufs.depth).collect();
    let (mut issued, mut done) = (0usize, 0usize);
    let mut err = None;
    let t0 = time::now_ns();
    while done < n {
        while issued < n && !free.is_empty() {
            let slot = free[free.len() - 1];
            let data = [(bufs.slot_ma(slot), (sectors * 512) as u32)];
            match dev.submit(op, at(issued), &data, slot as u64) {
                Ok(()) => {
                    free.pop();
                    issued += 1;
                }
                Err(SubmitError::Busy) => break,
                Err(SubmitError::Invalid) => return Err(status::UNSUPP),
            }
        }
        dev.kick();
        let got = dev.poll(|cookie, st| {
            free.push(cookie as usize);
            done += 1;
            if st != status::OK && err.is_none() {
                err = Some(st);
            }
        });
        if got == 0 {
            if dev.is_broken() {
                return Err(status::IOERR);
            }
            let _ = dev.wait(Some(time::now_ns() + 10_000_000_000), || false);
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(time::now_ns().saturating_sub(t0)),
    }
}

fn report(name: &str, unit: &str, samples: &mut [u64]) {
    if let Some(stats) = Stats::compute(samples) {
        println!("{}", Line { name, unit, stats });
    }
}

/// Runs the three benchmarks and prints their BENCH lines.
pub fn run(dev: &mut VirtioBlk, plan: Plan) {
    let region = match dma::alloc(DEPTH * SEQ_SECTORS as usize / 8) {
        Ok(r) => r,
        Err(e) => {
            println!("dom0: blkbench: no DMA buffers ({e})");
            return;
        }
    };
    let bufs = Buffers { region, depth: plan.depth.clamp(1, DEPTH) };
    let reqs_per_run = (plan.run_bytes / (SEQ_SECTORS * 512)).max(1) as usize;
    let seq_span = reqs_per_run as u64 * SEQ_SECTORS;
    if plan.span < seq_span || plan.start.checked_add(plan.span).is_none_or(|e| e > dev.capacity) {
        println!("dom0: blkbench: the disk is too small for the plan");
        let _ = dma::free(bufs.region);
        return;
    }
    let start = plan.start;
    for (name, op) in [("blk.seqwrite.dom0", Op::Write), ("blk.seqread.dom0", Op::Read)] {
        let mut samples = Vec::new();
        for run in 0..plan.runs {
            // Each run covers the next stretch of the area, wrapping around.
            let base = start + (run as u64 * seq_span) % (plan.span - seq_span + 1);
            match stream(dev, &bufs, op, reqs_per_run, SEQ_SECTORS, |i| base + i as u64 * SEQ_SECTORS) {
                Ok(ns) => samples.push(mib_per_s(seq_span * 512, ns)),
                Err(st) => {
                    println!("dom0: blkbench: {name} failed with status {st}");
                    break;
                }
            }
        }
        report(name, "MiB/s", &mut samples);
    }
    let mut samples = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let pages = plan.span / 8;
    for _ in 0..plan.rand_runs {
        let r = stream(dev, &bufs, Op::Read, RAND_PER_RUN, 8, |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            start + (x % pages) * 8
        });
        match r {
            Ok(ns) => samples.push(per_s(RAND_PER_RUN as u64, ns)),
            Err(st) => {
                println!("dom0: blkbench: blk.randread4k.dom0 failed with status {st}");
                break;
            }
        }
    }
    report("blk.randread4k.dom0", "IOPS", &mut samples);
    let _ = dma::free(bufs.region);
}

/// Waits (at most ten minutes) until no running domain is called or numbered `who`.
pub fn wait_for_shutdown(who: &str) {
    let running = || {
        dom0::domains::walk(crate::domctl::first_at).filter_map(Result::ok).any(|info| {
            let name = dom0::domains::domain_name(&info.handle, info.domain);
            dom0::domains::names(who, &name, info.domain) && !dom0::domains::gone(info.flags)
        })
    };
    let deadline = time::now_ns() + 600_000_000_000;
    while running() && time::now_ns() < deadline {
        let _ = time::sleep(10_000_000);
    }
}
