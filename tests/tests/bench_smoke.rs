//! The bench configuration boots and prints every expected BENCH line with sane values
//! (positive, min ≤ median ≤ p99). Timings themselves are never pass/fail.

use tests::{boot, kernels, Machine, Outcome, RunExt};

#[test]
fn bench_lines_are_printed_and_sane() {
    let k = kernels();
    let run = boot(&Machine::bench(&k, 2_000));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST bench-null PASS")
        .expect_line("TEST bench-console PASS")
        // The fast path's answer: Xen 4.19's `major << 16 | minor`.
        .expect_line("xen_version returned 0x40013,")
        .expect_line("TEST bench-mm PASS");
    let results = xtask::bench::parse(&run.log, "wall");
    for name in [
        "floor.syscall_sysret",
        "hypercall.null",
        "hypercall.console_io_16b",
        "mmu.update_one",
        "mmu.update_batch512",
        "mmu.update_va_mapping",
        "mmu.pin_unpin_l4",
        "evtchn.send",
        "evtchn.upcall",
        "grant.copy_4k",
        "grant.map_unmap",
    ] {
        let r = results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no BENCH line for {name}:\n{}", run.text()));
        assert!(r.n >= 1_000, "{name}: too few samples: {r:?}");
        assert!(r.min > 0 && r.min <= r.median && r.median <= r.p99, "{name}: insane figures {r:?}");
    }
}
