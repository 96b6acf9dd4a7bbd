//! Xen conformance of the CPU side (issue 11): the hypercall register contract, software
//! interrupts, privileged-instruction emulation and the crash report. Each guest check is a
//! structured `RESULT ... ok=1` line whose `want` is Xen 4.17's value.

use tests::{boot, kernels, Machine, Outcome, Run, RunExt};

/// Every `RESULT` line of `scenario` says `ok=1`, there is at least one, and the scenario passed.
fn all_results_ok(run: &Run, scenario: &str) {
    let text = run.text();
    let prefix = format!("RESULT scenario={scenario} ");
    let results: Vec<&str> = text.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(!results.is_empty(), "no RESULT lines for {scenario}:\n{text}");
    let bad: Vec<&&str> = results.iter().filter(|l| !l.ends_with("ok=1")).collect();
    assert!(bad.is_empty(), "checks of {scenario} that differ from Xen: {bad:#?}\n{text}");
    run.expect_line(&format!("TEST {scenario} PASS"));
}

fn scenario_agrees_with_xen(scenario: &str) {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, scenario));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FATAL").expect_no_line("crashed");
    all_results_ok(&run, scenario);
}

#[test]
fn a_hypercall_changes_only_rax_on_every_path() {
    scenario_agrees_with_xen("hypercall-regs");
}

#[test]
fn software_interrupts_reach_the_guest_as_xen_delivers_them() {
    scenario_agrees_with_xen("softint");
}

#[test]
fn privileged_instructions_are_emulated_or_refused_as_on_xen() {
    scenario_agrees_with_xen("privop-emul");
}
