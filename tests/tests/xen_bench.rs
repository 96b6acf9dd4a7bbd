//! `cargo xtask bench --peer xen` works: every metric of the peer set is measured under
//! microvisor and, with the same guest as Xen 4.17's dom0, under Xen, with sane figures.
//! Timings themselves are never pass/fail (they belong to `cargo xtask bench`).

use std::time::Duration;
use tests::{boot, kernels, Machine, Outcome, RunExt};
use xtask::bench::{parse_system, BenchResult, PEER_SET};
use xtask::qemu::System;

fn sane(results: &[BenchResult], name: &str, system: &str, log: &str) {
    let r = results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{system}: no BENCH line for {name}:\n{log}"));
    assert!(r.n >= 1_000, "{system} {name}: too few samples: {r:?}");
    assert!(r.min > 0 && r.min <= r.median && r.median <= r.p99, "{system} {name}: insane figures {r:?}");
    assert_eq!(r.system, system);
}

#[test]
fn the_new_peer_benchmarks_run_under_microvisor() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "bench-peer iters=2000"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST bench-peer PASS");
    let results = parse_system(&run.log, "wall", System::Microvisor);
    for name in [
        "hypercall.get_features",
        "evtchn.status",
        "mmu.pin_l1",
        "mmu.unpin_l1",
        "mmu.tlb_flush_local",
        "mmu.invlpg_local",
        "hypercall.multicall16",
        "sched.set_timer_op",
        "sched.yield",
    ] {
        sane(&results, name, "microvisor", &run.text());
    }
}

/// `xen::bench_machine` boots the guest with `scenario=bench-standalone`: every benchmark that
/// needs nothing but the hypervisor.
#[test]
fn the_peer_set_runs_under_xen_as_dom0() {
    let xen = match xtask::xen::hypervisor() {
        Ok(x) => x,
        Err(u) => return xtask::debian::skip("xen_bench::peer_set_under_xen", "the Xen 4.17 side", &u),
    };
    let k = kernels();
    let run = xtask::xen::bench_machine(&xen.image, &k.testguest, 2_000)
        .run(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST bench-null PASS")
        .expect_line("TEST bench-mm PASS")
        .expect_line("TEST bench-evtchn PASS")
        .expect_line("TEST bench-peer PASS");
    let results = parse_system(&run.log, "wall", System::Xen);
    for name in PEER_SET {
        sane(&results, name, "xen", &run.text());
    }
}
