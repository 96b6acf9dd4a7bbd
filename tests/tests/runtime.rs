//! The PV guest runtime on the real hypervisor, through the test guest: event delivery (timer
//! VIRQ, interdomain loopback, masking) and the memory manager (direct map, P2M/M2P, page
//! mapping), each checked against what Xen does.

use tests::{boot, kernels, Machine, Outcome, RunExt};

#[test]
fn events_are_delivered_as_xen_delivers_them() {
    let run = boot(&Machine::scenario(&kernels(), "events"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST events PASS")
        .expect_line("events: loopback: a got ")
        .expect_no_line(" FAIL ");
}

#[test]
fn the_memory_manager_maps_the_whole_domain() {
    let run = boot(&Machine::scenario(&kernels(), "mm"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST mm PASS").expect_no_line(" FAIL ");
}
