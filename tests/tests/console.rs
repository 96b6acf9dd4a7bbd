//! The split console: the demo domU prints through `console_io` (tagged `(d1)` by the
//! hypervisor) until its console ring is connected, then through the ring, drained by dom0's
//! console backend, which prints each line as `(d0) [<name>] ...`. dom0 can also push input
//! into a domU's console, which the demo echoes.

use tests::{boot, kernels, Machine, Module, Outcome, Run, RunExt};

/// The name dom0's toolstack gave domain 1, from its "introduced" line.
fn tag_of_d1(run: &Run) -> String {
    let line = run
        .lines_with("dom0: d1 (")
        .find(|l| l.contains(") introduced"))
        .unwrap_or_else(|| panic!("dom0 never introduced d1:\n{}", run.text()))
        .clone();
    let start = line.find("d1 (").unwrap() + 4;
    let end = line[start..].find(')').unwrap() + start;
    line[start..end].to_string()
}

fn console_machine() -> (Run, String) {
    let k = kernels();
    let mut m = Machine::standard(&k);
    m.modules[0] = Module::new(&k.dom0, "name=dom0 mem=64M -- steps=3 conin=1:hello_from_dom0");
    m.modules[1] = Module::new(&k.domu, "name=domU mem=32M -- steps=8 work=3000000");
    let run = boot(&m);
    let tag = tag_of_d1(&run);
    (run, tag)
}

#[test]
fn domu_output_moves_to_the_console_ring_served_by_dom0() {
    let (run, tag) = console_machine();
    assert!(!tag.is_empty() && !tag.contains(' '), "a usable tag: {tag:?}");
    let via_dom0 = format!("(d0) [{tag}] ");
    run.expect_outcome(Outcome::Poweroff)
        // Before the ring is up: console_io, tagged by the hypervisor.
        .expect_line("(d1) domU: up, ")
        // The handshake: backend InitWait, frontend Connected, backend Connected.
        .expect_line(&format!("dom0: d1 ({tag}) console frontend connected"))
        .expect_line(&format!(
            "{via_dom0}domU: console ring connected (backend /local/domain/0/backend/console/1/0)"
        ))
        .expect_order("(d1) domU: up, ", &format!("{via_dom0}domU: console ring connected"))
        // Then every line goes through dom0's backend, none through console_io.
        .expect_line(&format!("{via_dom0}domU: step 1/8"))
        .expect_line(&format!("{via_dom0}domU: step 8/8"))
        .expect_line(&format!("{via_dom0}domU: done after "))
        .expect_no_line("(d1) domU: step")
        .expect_no_line("(d1) domU: done")
        .expect_no_line("(d1) domU: console ring")
        // The domU's last lines are drained before dom0 tears it down.
        .expect_order(&format!("{via_dom0}domU: done after "), "dom0: d1 released and destroyed");
    let steps: Vec<_> = run.lines_with("domU: step ").collect();
    assert_eq!(steps.len(), 8, "each line exactly once:\n{}", run.text());
    assert!(steps.iter().all(|l| l.starts_with(&via_dom0)), "all via dom0:\n{}", run.text());
}

#[test]
fn console_input_reaches_the_domu() {
    let (run, tag) = console_machine();
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: 16 bytes of console input queued for d1")
        .expect_line(&format!("(d0) [{tag}] domU: console input: hello from dom0"));
}

#[test]
fn shut_down_domu_is_released_and_destroyed_without_leaks() {
    let (run, tag) = console_machine();
    run.expect_outcome(Outcome::Poweroff)
        .expect_line(&format!("dom0: d1 ({tag}) shut down (poweroff, code 0)"))
        // Ring mappings and ports are gone before the destruction: nothing stays referenced.
        .expect_order("Domain 1 (domU) shut down: poweroff", "Domain 1 destroyed: ")
        .expect_order("Domain 1 destroyed: ", "Domain 0 (dom0) shut down: poweroff")
        .expect_line("dom0: no domUs left");
    let line = tests::destroyed_line(&run, 1);
    assert_eq!(tests::field(&run, line, "referenced"), 0, "{line}");
}
