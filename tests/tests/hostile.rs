//! Hostile domUs: each breaks a rule and must be crashed alone (with a one-line reason on the
//! console) or get Xen's error code, while dom0 keeps running and powers off normally.

use tests::{boot, kernels, Machine, Outcome, RunExt};

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
