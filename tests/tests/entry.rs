//! The hypervisor's entry and exit paths against a hostile guest (issue 9, findings 2 and 3):
//! `syscall` from 32-bit code, RIPs that end up non-canonical, RFLAGS.DF set at an exception,
//! and the supervisor-mode protections that keep ring 0 out of guest pages. Each guest check
//! is a structured `RESULT <scenario> <check>=<value>` line, checked in the guest against Xen
//! 4.17's value (a mismatch fails the scenario with both values).

use tests::{all_results_ok, boot, kernels, Machine, Outcome, RunExt};

#[test]
fn smep_and_smap_keep_ring0_out_of_guest_pages() {
    let k = kernels();
    // On every boot the hypervisor calls into and reads a user page from ring 0; both must
    // fault (#PF: instruction fetch, present; read, present) — QEMU's `-cpu max` has both.
    boot(&Machine::standard(&k)).expect_outcome(Outcome::Poweroff).expect_line(
        "(XEN) cpu-protection smep=1 smap=1 user-exec=blocked(#PF,ec=0x11) user-read=blocked(#PF,ec=0x1)",
    );
}

#[test]
fn syscall_from_32_bit_code_is_bounced_as_xen_does_and_never_runs_guest_code_in_ring0() {
    let k = kernels();
    // With a page of guest code at virtual address 0: a CSTAR of 0 ran it in ring 0.
    let run = boot(&Machine::scenario(&k, "syscall-compat"));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FATAL").expect_no_line("crashed");
    all_results_ok(&run, "syscall-compat");
}

#[test]
fn a_non_canonical_rip_is_the_guests_gp_never_a_ring0_fault() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "noncanonical-rip"));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FATAL").expect_no_line("crashed");
    all_results_ok(&run, "noncanonical-rip");
}

#[test]
fn a_guest_setting_df_before_an_exception_neither_corrupts_the_hypervisor_nor_loses_its_df() {
    let k = kernels();
    // `std; ud2` once stopped the machine: the hypervisor's `rep movs` copies ran backwards.
    let run = boot(&Machine::scenario(&k, "entry-flags"));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FATAL").expect_no_line("crashed");
    all_results_ok(&run, "entry-flags");
}
