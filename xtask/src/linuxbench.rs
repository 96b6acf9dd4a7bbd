//! The Linux disk benchmark of `cargo xtask bench` (issue 12's goals): Debian's cloud kernel as
//! a PV domU reads its disk through xen-blkfront and dom0's blkback, next to dom0 reading the
//! same virtio-blk disk natively in the same boot, and the time from QEMU's start to Linux's
//! init.
//!
//! One boot: dom0 measures the disk first (`blkbench=`, before its services start: its
//! `blk.*.dom0` figures, reported here as `blk.*.dom0.linux-boot`), then serves it to the
//! Linux domU, whose init runs busybox `dd` with `iflag=direct` (O_DIRECT: no page cache)
//! against the raw `/dev/xvda`: sequential reads of 4 MiB blocks (blkfront splits each into
//! requests of its 32 indirect segments, 128 KiB, all in flight at once), and 4 KiB reads at
//! random offsets, one `dd` process per read (so that figure includes a process start per
//! read: it is what busybox can measure, not the device's limit). Times come from the
//! kernel's `/proc/timer_list` clock (ns). Each figure becomes a `BENCH` line like every other
//! benchmark's. Linux runs with its defaults (one-page ring, 32 indirect segments, persistent
//! grants); `LINUXBENCH_CMDLINE` adds to its command line, e.g.
//! `xen_blkfront.max_ring_page_order=2` or `xen_blkfront.feature_persistent=0`.

use crate::bench::BenchResult;
use crate::kernels::Kernels;
use crate::linux::{self, Role};
use crate::qemu::{Machine, Module, Outcome, Run};
use crate::Result;
use std::time::{Duration, Instant};

/// Sequential runs and MiB per run; random-read runs and reads per run.
const SEQ_RUNS: u32 = 8;
const SEQ_MIB: u32 = 32;
const RAND_RUNS: u32 = 4;
const RAND_READS: u32 = 128;
/// The disk: as large as dom0's own benchmark span (`blkbench=64`) plus room.
const DISK_MIB: u64 = 128;

/// The init's benchmark lines: wait for the disk, then each run prints its figure and the
/// runs become one `BENCH` line per metric (awk does the statistics).
fn script() -> Vec<String> {
    let blocks = DISK_MIB * 256;
    let seq_span = DISK_MIB as u32 - SEQ_MIB;
    vec![
        // ns since boot: /proc/timer_list's clock (busybox's date has no %N).
        "now() { awk '/^now at/ {print $3; exit}' /proc/timer_list; }".into(),
        "stats() { sort -n | awk -v name=$1 -v unit=$2 '{a[NR]=$1} END {p=int(NR*0.99+0.999); if (p<1) p=1; \
         printf \"BENCH name=%s unit=%s n=%d min=%d median=%d p99=%d\\n\", name, unit, NR, a[1], a[int((NR+1)/2)], a[p]}'; }"
            .into(),
        "i=0; while [ ! -b /dev/xvda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done".into(),
        "echo LINUXBENCH start".into(),
        format!(
            "r=0; while [ $r -lt {SEQ_RUNS} ]; do t0=$(now); \
             dd if=/dev/xvda of=/dev/null bs=4M count=$(({SEQ_MIB}/4)) skip=$((r*{SEQ_MIB}/4 % ({seq_span}/4))) iflag=direct 2>/dev/null; \
             t1=$(now); echo $(( {SEQ_MIB} * 1000000000 / (t1-t0) )); r=$((r+1)); done | stats blk.seqread.linux MiB/s"
        ),
        format!(
            "r=0; while [ $r -lt {RAND_RUNS} ]; do t0=$(now); n=0; \
             while [ $n -lt {RAND_READS} ]; do \
             dd if=/dev/xvda of=/dev/null bs=4k count=1 skip=$(( (RANDOM*32768+RANDOM) % {blocks} )) iflag=direct 2>/dev/null; \
             n=$((n+1)); done; t1=$(now); \
             echo $(( {RAND_READS} * 1000000000 / (t1-t0) )); r=$((r+1)); done | stats blk.randread4k.linux IOPS"
        ),
        "echo LINUXBENCH done".into(),
    ]
}

/// The machine: dom0 (benchmarking the disk at boot) and the Linux domU `linux` with a raw
/// disk of its own (no file system: the benchmark reads the device).
fn machine(k: &Kernels) -> std::result::Result<Machine, String> {
    let mut g = linux::prepare("bench", Role::DomU { shell: false }).map_err(|u| u.to_string())?;
    g.plan.disk = None;
    if let Ok(extra) = std::env::var("LINUXBENCH_CMDLINE") {
        println!("xtask bench: Linux's command line gets {extra:?} (LINUXBENCH_CMDLINE)");
        g.cmdline = format!("{} {extra}", g.cmdline);
    }
    let busybox = linux::busybox().map_err(|u| u.to_string())?;
    let mut bytes = linux::initramfs(&busybox, &g.plan)?;
    // A second cpio archive after the first replaces `/init` with the benchmark's (Linux
    // unpacks concatenated archives in order, a later file overwriting an earlier one).
    bytes.extend(bench_init(&linux::init_script(&g.plan)).map_err(|e| format!("the benchmark's init: {e}"))?);
    g.initramfs = g.initramfs.with_file_name("initramfs-bench.cpio");
    std::fs::write(&g.initramfs, bytes).map_err(|e| format!("{}: {e}", g.initramfs.display()))?;
    g.disk = Some(crate::disk::allocated_image("linux-bench", DISK_MIB << 20)?);
    let mut m = Machine::with_hypervisor(&k.microvisor, "");
    m.modules = vec![Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0")];
    Ok(m.with_linux_domu(&g, "linux", "256M").dom0_options("blkbench=64"))
}

/// A cpio archive holding `/init`: the init script `init` with the benchmark's lines before
/// it powers off.
fn bench_init(init: &str) -> std::io::Result<Vec<u8>> {
    let at = init.rfind(POWEROFF).unwrap_or(init.len());
    let script = format!("{}{}\n{}", &init[..at], script().join("\n"), &init[at..]);
    linux::cpio_newc(&[linux::CpioEntry::File {
        path: "init".into(),
        mode: 0o755,
        data: script.into_bytes(),
    }])
}

/// Where the init powers off (the benchmark goes right before).
const POWEROFF: &str = "echo LINUXINIT poweroff";

/// Runs the benchmark boot; `Ok(None)` (said loudly) where Debian's packages cannot be had.
pub fn run(k: &Kernels) -> Result<Option<(Vec<BenchResult>, Run)>> {
    let m = match machine(k) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("\n*** xtask bench: no Linux disk benchmark: {e}\n");
            return Ok(None);
        }
    };
    let t0 = Instant::now();
    let mut to_init = None;
    let run = m.run_watching(Duration::from_secs(900), |line| {
        if to_init.is_none() && line.contains("LINUXINIT start") {
            to_init = Some(t0.elapsed());
        }
    })?;
    let results = results(&run.log, to_init);
    if run.outcome != Outcome::Poweroff || !run.has("LINUXBENCH done") || results.len() < 3 {
        return Err(format!(
            "Linux bench machine ended with {:?} and {} results\n{}",
            run.outcome,
            results.len(),
            run.text()
        ));
    }
    // dom0's account of the connection (requests, indirect ones, where its time went).
    for l in run.log.iter().filter(|l| l.contains("disconnected (") || l.contains("blkback totals")) {
        println!("{l}");
    }
    Ok(Some((results, run)))
}

/// The boot's figures: Linux's, dom0's (renamed `*.dom0.linux-boot`), and the boot time.
fn results(log: &[String], to_init: Option<Duration>) -> Vec<BenchResult> {
    let mut out: Vec<BenchResult> = crate::bench::parse(log, "wall")
        .into_iter()
        .filter(|r| r.name.starts_with("blk.") && (r.name.ends_with(".linux") || r.name.ends_with(".dom0")))
        .map(|r| match r.name.strip_suffix(".dom0") {
            Some(base) => BenchResult { name: format!("{base}.dom0.linux-boot"), ..r },
            None => r,
        })
        .collect();
    if let Some(d) = to_init {
        let ms = d.as_millis() as u64;
        out.push(BenchResult {
            name: "linux.boot_to_init".into(),
            unit: "ms".into(),
            n: 1,
            min: ms,
            median: ms,
            p99: ms,
            mode: "wall".into(),
            system: crate::bench::microvisor(),
        });
    }
    out
}

/// Linux's figures over dom0's native ones of the same boot (the goal: sequential
/// reads at >= 0.90 of dom0's).
pub fn summary(results: &[BenchResult]) -> String {
    let median = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.median);
    let mut out = String::new();
    for kind in ["seqread", "randread4k"] {
        if let (Some(d0), Some(l)) =
            (median(&format!("blk.{kind}.dom0.linux-boot")), median(&format!("blk.{kind}.linux")))
        {
            if d0 > 0 {
                out += &format!(
                    "blk.{kind}: linux/dom0 (same boot) = {:.2} ({l} / {d0})\n",
                    l as f64 / d0 as f64
                );
            }
        }
    }
    if let Some(ms) = median("linux.boot_to_init") {
        out += &format!("linux.boot_to_init: {ms} ms from QEMU's start to Linux's init (goal <= 5000)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_taken_from_the_boot_and_named_apart() {
        let log: Vec<String> = [
            "(d0) BENCH name=blk.seqread.dom0 unit=MiB/s n=16 min=900 median=1000 p99=1100",
            "(d0) BENCH name=blk.randread4k.dom0 unit=IOPS n=16 min=9000 median=10000 p99=11000",
            "(d0) [linux] BENCH name=blk.seqread.linux unit=MiB/s n=8 min=800 median=950 p99=990",
            "(d0) [linux] BENCH name=blk.randread4k.linux unit=IOPS n=4 min=100 median=120 p99=130",
            "(d0) BENCH name=hypercall.null unit=tsc n=1 min=1 median=1 p99=1",
        ]
        .map(String::from)
        .to_vec();
        let r = results(&log, Some(Duration::from_millis(4321)));
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.seqread.dom0.linux-boot",
                "blk.randread4k.dom0.linux-boot",
                "blk.seqread.linux",
                "blk.randread4k.linux",
                "linux.boot_to_init"
            ]
        );
        let s = summary(&r);
        assert!(s.contains("blk.seqread: linux/dom0 (same boot) = 0.95 (950 / 1000)"), "{s}");
        assert!(s.contains("linux.boot_to_init: 4321 ms"), "{s}");
    }

    #[test]
    fn the_script_ends_in_bench_lines_for_both_metrics() {
        let archive =
            bench_init("#!/bin/busybox sh\necho LINUXINIT start\necho LINUXINIT poweroff\npoweroff -f\n")
                .unwrap();
        let entries = linux::cpio_entries(&archive).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "init");
        let s = String::from_utf8(entries[0].3.clone()).unwrap();
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        let (bench, off) = (s.find("LINUXBENCH start").unwrap(), s.find(POWEROFF).unwrap());
        assert!(s.find("LINUXINIT start").unwrap() < bench && bench < off, "{s}");
        assert!(s.contains("iflag=direct"));
        assert!(s.contains("stats blk.seqread.linux MiB/s") && s.contains("stats blk.randread4k.linux IOPS"));
        assert!(s.contains("printf \"BENCH name=%s unit=%s n=%d min=%d median=%d p99=%d\\n\""));
    }
}
