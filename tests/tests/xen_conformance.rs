//! Differential conformance against Xen 4.17: each standalone test-guest scenario runs under
//! microvisor (as a domU) and under Debian's Xen 4.17 (as dom0) in the same QEMU, and every
//! check either agrees or is listed as a deliberate or known difference
//! (`xtask::conformance`). The microvisor side always runs; the Xen side wherever the Debian
//! package can be fetched, and otherwise the test says loudly that it skipped it.

use tests::{kernels, Outcome, Run};
use xtask::conformance::{self, Pair};

/// The last lines of a log, for failure messages.
fn tail(run: &Run, n: usize) -> String {
    run.log[run.log.len().saturating_sub(n)..].join("\n")
}

fn differential(label: &str) {
    let s = conformance::find(label).unwrap_or_else(|| panic!("no scenario {label}"));
    let k = kernels();
    let xen = xtask::xen::hypervisor();
    let pair: Pair = conformance::run_pair(&k, &xen, s).unwrap_or_else(|e| panic!("cannot run {label}: {e}"));
    let (mv_run, mv) = &pair.microvisor;
    assert_eq!(
        mv_run.outcome,
        Outcome::Poweroff,
        "microvisor's machine did not power off\n{}",
        tail(mv_run, 80)
    );
    assert!(
        mv.checks.iter().any(|(c, v)| c == "end" && v != "none" && v != "timeout"),
        "the guest's end is not in microvisor's log: {:?}\n{}",
        mv.checks,
        tail(mv_run, 80)
    );
    let Some(rows) = pair.rows() else {
        if let Err(u) = &xen {
            xtask::debian::skip(&format!("xen_conformance::{label}"), "the Xen 4.17 side", u);
        }
        return;
    };
    let (xen_run, _) = pair.xen.as_ref().expect("rows exist only with a Xen run");
    let bad: Vec<_> = rows.iter().filter(|r| !r.verdict.is_ok()).collect();
    assert!(
        bad.is_empty(),
        "{} check(s) of {label} differ from Xen 4.17 without being listed in xtask/src/conformance.rs \
         (fix microvisor, or list the difference with its reason):\n{}\n---- microvisor log (tail) ----\n{}\n\
         ---- Xen log (tail) ----\n{}",
        bad.len(),
        conformance::table(label, &rows, true),
        tail(mv_run, 60),
        tail(xen_run, 60)
    );
}

macro_rules! scenarios {
    ($($name:ident => $label:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                differential($label);
            }
        )*

        /// Every scenario of the run has a test here.
        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($label),*];
            for s in conformance::SCENARIOS {
                assert!(tested.contains(&s.label), "{} has no test in xen_conformance.rs", s.label);
            }
        }
    };
}

scenarios! {
    trap_pf => "trap-pf",
    trap_ud => "trap-ud",
    events => "events",
    badargs => "badargs",
    mm => "mm",
    mm_hostile => "mm-hostile",
    ipc_hostile => "ipc-hostile",
    user_mode => "user-mode",
    syscall_compat => "syscall-compat",
    noncanonical_rip => "noncanonical-rip",
    entry_flags => "entry-flags",
    privop_hlt => "privop-hlt",
    privop_wrmsr => "privop-wrmsr",
    privop_in => "privop-in",
    hypercall_regs => "hypercall-regs",
    softint => "softint",
    privop_emul => "privop-emul",
    debugreg => "debugreg",
    iopl => "iopl",
    segbase => "segbase",
    iret_to_self => "iret-to-self",
    ptwr => "ptwr",
    vcpu_ops => "vcpu-ops",
    evtchn_ops => "evtchn-ops",
    gnttab_ops => "gnttab-ops",
    memop => "memop",
    unmapped => "unmapped",
    hvspace => "hvspace",
    stack_overflow => "stack-overflow",
}
