//! Hostile domUs: each breaks a rule and must be crashed alone (with a one-line reason on the
//! console) or get Xen's error code, while dom0 keeps running and powers off normally.

use tests::{boot, guest_value, kernels, Machine, Outcome, RunExt};

fn crashed_alone(scenario: &str, reason: &str) {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, scenario));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("d1v0 crashed: ")
        .expect_line(reason)
        .expect_line("Domain 1 (tg) shut down: crash")
        .expect_order("Domain 1 (tg) shut down: crash", "Domain 0 (dom0) shut down: poweroff")
        .expect_no_line(" FAIL ");
}

#[test]
fn privileged_instruction_without_handler_crashes_the_guest_alone() {
    crashed_alone("privop", "unhandled #GP");
}

#[test]
fn unmapped_access_without_handler_crashes_the_guest_alone() {
    crashed_alone("unmapped", "unhandled #PF");
}

#[test]
fn jump_into_hypervisor_space_crashes_the_guest_alone() {
    crashed_alone("hvspace", "unhandled #PF");
}

#[test]
fn bad_hypercall_arguments_get_xen_error_codes() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "badargs"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST badargs PASS").expect_no_line("crashed");
}

/// The hypervisor's copies run through the MMU with the guest's page tables loaded: faults on
/// unmapped and read-only addresses are recovered by its fixup table (it counts them), the
/// hole and non-canonical ranges are refused before any copy, every case gets -EFAULT and
/// nothing read-only to the guest is written.
#[test]
fn guest_copies_through_the_mmu_fault_cleanly() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "guest-copy"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST guest-copy PASS")
        .expect_no_line("crashed")
        .expect_no_line("MISMATCH");
    let expected = guest_value(&run, 1, "guest-copy", "mmu-faults");
    let text = run.text();
    let recovered: i64 = text
        .lines()
        .find_map(|l| l.split_once("(XEN) guest-copy faults=").map(|(_, v)| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no '(XEN) guest-copy faults=N' line:\n{text}"));
    assert!(expected >= 8, "the scenario ran only {expected} faulting cases:\n{text}");
    assert!(recovered >= expected, "{recovered} faults recovered, {expected} expected:\n{text}");
}
