//! A guest with a trap table gets its exceptions bounced with Xen's frame: #PF with the right
//! `cr2` and error code, #UD at the right RIP, and the forced-emulation CPUID prefix emulated.

use tests::{boot, kernels, Machine, Outcome, RunExt};

#[test]
fn page_fault_is_bounced_with_cr2() {
    let k = kernels();
    boot(&Machine::scenario(&k, "trap-pf"))
        .expect_outcome(Outcome::Poweroff)
        .expect_line("TEST trap-pf PASS");
}

#[test]
fn invalid_opcode_is_bounced_and_forced_cpuid_emulated() {
    let k = kernels();
    boot(&Machine::scenario(&k, "trap-ud"))
        .expect_outcome(Outcome::Poweroff)
        .expect_line("TEST trap-ud PASS");
}

#[test]
fn a_stack_overflow_hits_the_guard_page_and_crashes_the_domain_alone() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "stack-overflow"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST stack-overflow RUNNING")
        .expect_line("d1v0 crashed: cannot write bounce frame")
        .expect_no_line("TEST stack-overflow FAIL")
        .expect_line("Domain 0 (dom0) shut down: poweroff");
    // Every frame came back at once: its 32 MiB, shared_info and one grant frame.
    let line = tests::destroyed_line(&run, 1);
    let got: (u64, u64) = (tests::field(&run, line, "released"), tests::field(&run, line, "referenced"));
    assert_eq!(got, (32 * 256 + 2, 0), "{line}");
}
