//! Event channels and grant tables under a hostile domU: ports out of range or already bound,
//! sends on closed ports, another domain's ports, unknown grant refs, grants for another
//! domain, writable maps of read-only grants, double unmaps, bad handles, copies across a page
//! end, grant version 2. Each gets Xen's error and nothing else happens; dom0 powers off.

use tests::{boot, kernels, Machine, Outcome, RunExt};

const CASES: &[&str] = &[
    "send-port-0",
    "send-port-beyond-table",
    "send-port-4096",
    "send-port-max",
    "close-port-beyond-limit",
    "unmask-port-beyond-limit",
    "bind-virq-timer-twice",
    "bind-virq-out-of-range",
    "bind-virq-bad-vcpu",
    "bind-interdomain-already-bound",
    "send-on-closed-port",
    "close-closed-port",
    "bind-port-offered-to-dom0",
    "bind-to-missing-domain",
    "status-of-dom0-port",
    "unknown-evtchn-op",
    "map-grant-for-another-domain",
    "map-readonly-grant-writable",
    "map-readonly-grant-readonly",
    "revoke-while-mapped",
    "unmap",
    "unmap-twice",
    "revoke-after-unmap",
    "unmap-bad-handle",
    "map-unknown-gref",
    "map-missing-domain",
    "copy-source-offset-plus-len-past-page",
    "copy-dest-offset-plus-len-past-page",
    "set-version-2",
    "unknown-grant-op",
];

#[test]
fn hostile_event_channel_and_grant_calls_get_xen_errors() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "ipc-hostile"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_no_line("crashed")
        .expect_no_line("MISMATCH")
        .expect_line("TEST ipc-hostile PASS")
        .expect_order("Domain 1 (tg) shut down: poweroff", "Domain 0 (dom0) shut down: poweroff");
    for tag in CASES {
        let line = run
            .log
            .iter()
            .find(|l| l.contains(&format!("HOSTILE {tag} -> ")))
            .unwrap_or_else(|| panic!("no result for {tag}:\n{}", run.text()));
        assert!(line.ends_with(" ok"), "{line}");
    }
}
