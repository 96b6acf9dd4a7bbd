//! Xen conformance of the core hypercalls (issue 11 items 5, 7 and 8): the test guest's
//! `vcpu-ops`, `evtchn-ops` and `gnttab-ops` scenarios, each a list of `<scenario>: key=value`
//! checks against Xen 4.17's answers. They need no xenstore and no second domain, so the same
//! scenarios run as dom0 under Xen for the differential run.

use tests::{guest_value, scenario_passes, RunExt};

/// The value the test guest (domain 1) printed for `key` in `scenario`.
fn value(run: &tests::Run, scenario: &str, key: &str) -> i64 {
    guest_value(run, 1, scenario, key)
}

#[test]
fn vcpu_ops_answer_as_xen() {
    let run = scenario_passes("vcpu-ops");
    // VCPUOP_down on the only vCPU powers the domain off (the guest's last call).
    run.expect_order("TEST vcpu-ops PASS", "Domain 1 (tg) shut down: poweroff")
        .expect_no_line("TEST vcpu-ops FAIL");
    assert_eq!(value(&run, "vcpu-ops", "register_vcpu_info"), 0);
    assert_eq!(value(&run, "vcpu-ops", "moved_pending_sel_all"), 1);
    assert!(value(&run, "vcpu-ops", "runstate_area_blocked_ns") >= 1_000_000);
    assert_eq!(value(&run, "vcpu-ops", "ticks_after_stop"), 0);
}

#[test]
fn event_channel_ops_answer_as_xen() {
    let run = scenario_passes("evtchn-ops");
    assert_eq!(value(&run, "evtchn-ops", "ipi_delivered"), 1);
    assert_eq!(value(&run, "evtchn-ops", "init_control_no_fifo"), -95);
}

#[test]
fn grant_table_ops_answer_as_xen() {
    let run = scenario_passes("gnttab-ops");
    assert_eq!(value(&run, "gnttab-ops", "replaced_reads_new_page"), 1);
    assert_eq!(value(&run, "gnttab-ops", "new_addr_unmapped"), 1);
}
