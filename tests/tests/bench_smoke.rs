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
        .expect_line("TEST bench-mm PASS")
        .expect_line("TEST bench-evtchn PASS")
        .expect_line("TEST bench-pingpong PASS")
        .expect_line("TEST bench-switch PASS")
        .expect_line("TEST switch-partner PASS");
    let results = xtask::bench::parse(&run.log, "wall");
    for name in [
        "floor.syscall_sysret",
        "hypercall.null",
        "hypercall.console_io_16b",
        "mmu.update_one",
        "mmu.update_batch512",
        "mmu.update_va_mapping",
        "mmu.pin_l4",
        "mmu.unpin_l4",
        "evtchn.send",
        "evtchn.upcall",
        "grant.copy_4k",
        "grant.map_unmap",
        "evtchn.pingpong",
        "sched.domain_switch",
    ] {
        let r = results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no BENCH line for {name}:\n{}", run.text()));
        assert!(r.n >= 1_000, "{name}: too few samples: {r:?}");
        assert!(r.min > 0 && r.min <= r.median && r.median <= r.p99, "{name}: insane figures {r:?}");
    }
}

/// dom0's event-channel echo (the far end of `evtchn.pingpong`) takes its port from a node the
/// domU writes: values that are not a port, or name a port dom0 may not bind, are refused
/// one by one, and the echo still works on a good port afterwards.
#[test]
fn the_echo_service_refuses_bad_ports_then_echoes() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "bench-pingpong iters=1000 probe-hostile"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST bench-pingpong PASS");
    let refusals = run.lines_with("data/evtchn-echo is not a port").count();
    // "junk", "0" and "4096" (the watch may fire once more for the first of them).
    assert!((3..=4).contains(&refusals), "{refusals} refusals\n{}", run.text());
    // The xenstore port is bound already; the other was allocated for the domain itself.
    assert_eq!(run.lines_with("cannot bind its port").count(), 2, "{}", run.text());
    run.expect_order("cannot bind its port", "event-channel echo on its port")
        .expect_order("event-channel echo on its port", "BENCH name=evtchn.pingpong")
        .expect_order("BENCH name=evtchn.pingpong", "event-channel echo off");
}
