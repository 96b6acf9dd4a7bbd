//! The demo machine: dom0 and the PV domU boot, print through the hypervisor console, are
//! preempted by the scheduler so their output interleaves, and shut down cleanly — domU
//! first, then dom0, whose poweroff ends QEMU with the success status.

use tests::{boot, kernels, Machine, Outcome, RunExt};

#[test]
fn demo_boots_interleaves_and_powers_off() {
    let k = kernels();
    let run = boot(&Machine::standard(&k));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("(d0) ")
        .expect_line("(d1) ")
        .expect_line("Domain 1 (domU) shut down: poweroff")
        .expect_line("Domain 0 (dom0) shut down: poweroff")
        .expect_order("Domain 1 (domU) shut down", "Domain 0 (dom0) shut down");
    // Preemption: each domain's loop output is interrupted by the other's at least once.
    // The domU's lines reach the console through dom0's console backend ("(d0) [domU] domU:
    // step ..."), so the two loops are told apart by their text.
    let tags: Vec<char> = run
        .log
        .iter()
        .filter_map(|l| {
            if l.contains("dom0: step ") {
                Some('0')
            } else if l.contains("domU: step ") {
                Some('1')
            } else {
                None
            }
        })
        .collect();
    let s: String = tags.iter().collect();
    assert!(
        s.contains("010") && s.contains("101"),
        "dom0/domU loop lines are not interleaved ({s}):\n{}",
        run.text()
    );
}

#[test]
fn hypervisor_reports_each_domains_shutdown_reason() {
    let k = kernels();
    let run = boot(&Machine::standard(&k));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("d0 (dom0): poweroff")
        // dom0 destroys a domU once it has shut down, so it leaves the final summary.
        .expect_line("Domain 1 (domU) shut down: poweroff")
        .expect_line("Domain 1 destroyed: ");
}

#[test]
fn malformed_module_is_refused_with_a_clear_message() {
    let k = kernels();
    let mut m = Machine::standard(&k);
    // The hypervisor image itself is an ELF without Xen notes: not a PV kernel.
    m.modules.push(tests::Module::new(&k.microvisor, "name=bogus"));
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("module 2")
        .expect_line("Domain 1 (domU) shut down: poweroff");
}

#[test]
fn hypervisor_fault_prints_a_readable_dump_and_fails_the_run() {
    let k = kernels();
    let mut m = Machine::standard(&k);
    m.hv_cmdline = "selftest=fault".into();
    let run = boot(&m);
    run.expect_outcome(Outcome::HypervisorFault)
        .expect_line("(XEN) FATAL: fault in the hypervisor")
        .expect_line("vector 0xd (#GP)")
        .expect_line("(XEN) rip 0xffff82d0")
        .expect_line("(XEN) rax ")
        .expect_line("cr2")
        .expect_line("(XEN) running: ");
}
