//! The hypervisor's per-domain limits against hostile domUs (issue 9): a domU flooding its
//! console gets a burst and then a trickle, with the refused lines counted; domUs making the
//! hypervisor keep as much state as the ABI allows are each stopped by their own quota with an
//! error, the hypervisor survives, and a well-behaved domU next to them passes its tests.

use tests::{boot, guest_value, kernels, Machine, Module, Outcome, RunExt};

#[test]
fn a_domu_flooding_its_console_is_rate_limited_and_dom0_is_not() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "console-flood"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST console-flood PASS").expect_no_line("crashed");
    let lines = guest_value(&run, 1, "console-flood", "lines");
    let printed = run.text().lines().filter(|l| l.contains("(d1) flood ")).count() as i64;
    // The hypervisor reports the refused lines whenever the domU's next line goes out.
    let refused: i64 = run
        .text()
        .lines()
        .filter_map(|l| {
            l.split_once("(XEN) d1: ")?.1.strip_suffix(" console line(s) suppressed (rate limit)")
        })
        .map(|n| n.parse::<i64>().expect("a count"))
        .sum();
    assert!(refused > 0, "no suppression report\n{}", run.text());
    assert_eq!(printed + refused, lines, "every line is printed or counted\n{}", run.text());
    // The burst (64 KiB) and the refill during the flood: far fewer than the flood.
    assert!(printed < lines / 4, "{printed} of {lines} lines printed\n{}", run.text());
    assert!(printed > 100, "the burst goes out: {printed} lines\n{}", run.text());
    run.expect_order("console line(s) suppressed", "TEST console-flood PASS")
        // dom0 keeps printing after the flood (its output is never limited).
        .expect_order("TEST console-flood PASS", "(d0) dom0: d1 (tg) shut down");
}

#[test]
fn hostile_domus_exhausting_hypervisor_memory_are_stopped_by_their_quotas() {
    const HOSTILE: u16 = 14;
    let k = kernels();
    let mut m = Machine::scenario(&k, "hv-mem-hostile").dom0_options("vrng=none");
    m.modules.truncate(1);
    for i in 0..HOSTILE {
        m.modules.push(Module::new(&k.testguest, &format!("name=h{i} mem=16M -- scenario=hv-mem-hostile")));
    }
    // A well-behaved neighbour: timers, event channels, loopback.
    m.modules.push(Module::new(&k.testguest, "name=ok mem=16M -- scenario=events"));
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_no_line("PANIC")
        .expect_no_line("FATAL")
        .expect_no_line("crashed")
        .expect_line(&format!("(d{}) TEST events PASS", HOSTILE + 1));
    for d in 1..=HOSTILE {
        run.expect_line(&format!("(d{d}) TEST hv-mem-hostile PASS"));
        assert_eq!(guest_value(&run, d, "hv-mem", "grant_frames"), 32, "d{d}\n{}", run.text());
        let mappings = guest_value(&run, d, "hv-mem", "mappings");
        // Stopped by its quota (512 KiB, most of it the full grant table), well before the
        // 16384 handles of the ABI: the hypervisor's heap held.
        assert!(mappings > 0 && mappings < 4096, "d{d}: {mappings} mappings\n{}", run.text());
        assert_eq!(guest_value(&run, d, "hv-mem", "map_refused_status"), -7, "GNTST_no_device_space, d{d}");
        // Every port left of the 1024 (port 0 is reserved; the runtime holds a few).
        let ports = guest_value(&run, d, "hv-mem", "ports");
        assert!((1000..1024).contains(&ports), "d{d}: {ports} ports\n{}", run.text());
        assert_eq!(guest_value(&run, d, "hv-mem", "port_refused_errno"), -28, "ENOSPC, d{d}");
    }
}

/// A guest that sets its virtual CR0.TS and then has the hypervisor print for it: the
/// hypervisor's save of the guest's FPU registers (before it formats) must not fault on TS.
#[test]
fn printing_with_the_guests_virtual_ts_set_does_not_fault_the_hypervisor() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "fpu-ts-console"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("(d1) fpu-ts-console: printed with TS set")
        .expect_line("TEST fpu-ts-console PASS")
        .expect_no_line("FATAL");
}
