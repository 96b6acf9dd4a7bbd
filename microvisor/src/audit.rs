//! The frame-table audit at run time: with `audit=<N>` on the hypervisor command line, every
//! Nth hypercall (and once more when the machine stops) recomputes every frame's reference
//! and type counts from scratch ([`FrameTable::audit`]) against the references held outside
//! page tables, and stops the machine with a report at the first inconsistency. Fuzzing
//! campaigns run with it so that a hypercall that breaks the frame table's invariants is
//! caught within N calls of doing so, not when a guest finally exploits it.
//!
//! While it is on, it also tallies the hypercalls each domain completed, by number
//! ([`hypercall_abi::hypercall::tally`]), and prints the tallies when the machine stops, so
//! that the host can check a fuzzer's claims about the calls it issued against the
//! hypervisor's own count. A call is counted once, when it returns: a continuation
//! re-executes the same call and is not counted again.
//!
//! Off by default. The hypercall fast path in the arch layer never reaches it
//! (`xen_version(XENVER_version)`, which is therefore never counted); the general path pays
//! one test of a counter.
//!
//! [`FrameTable::audit`]: crate::mm::frame_table::FrameTable::audit

use crate::domain::DomainState;
use crate::hv::Hypervisor;
use crate::mm::frame_table::ExternalRef;
use crate::platform::Platform;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::hypercall::{nr, tally};
use hypercall_abi::DomId;

/// Largest `N` of `audit=<N>`.
pub const MAX_EVERY: u64 = 1 << 32;
/// Domains whose hypercalls are tallied (the first ones seen); later ones are counted as
/// `untallied` only.
pub const MAX_TALLIED_DOMAINS: usize = 16;
/// Buckets per `key=value` line of the tally at stop (a console line holds about 300 bytes).
const TALLY_PER_LINE: usize = 8;

/// One domain's completed hypercalls, by [`tally::bucket`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainTally {
    pub domid: DomId,
    pub calls: [u64; tally::BUCKETS],
}

/// The audit's schedule and tally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Audit every this many hypercalls (0: off).
    every: u64,
    /// Hypercalls left until the next audit.
    left: u64,
    /// Hypercalls seen while on.
    pub hypercalls: u64,
    /// Audits that found the frame table consistent.
    pub passed: u64,
    /// Completed hypercalls per domain, in the order the domains first called.
    pub tallies: Vec<DomainTally>,
    /// Completed hypercalls of domains beyond [`MAX_TALLIED_DOMAINS`] (or when memory for a
    /// tally could not be had).
    pub untallied: u64,
}

impl Audit {
    /// An audit every `every` hypercalls (`every` > 0).
    pub fn every(every: u64) -> Audit {
        Audit { every, left: every, ..Audit::default() }
    }

    /// `audit=<N>` from the hypervisor's command line: `Ok(None)` without the option, `Err`
    /// with a message for a malformed one.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Audit>, String> {
        let Some(v) = cmdline.split_whitespace().find_map(|o| o.strip_prefix("audit=")) else {
            return Ok(None);
        };
        match v.parse::<u64>() {
            Ok(n) if (1..=MAX_EVERY).contains(&n) => Ok(Some(Audit::every(n))),
            _ => Err(alloc::format!("audit={v}: want a number of hypercalls, 1..={MAX_EVERY}")),
        }
    }

    /// Hypercalls between audits (0: off).
    pub fn period(&self) -> u64 {
        self.every
    }

    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.every != 0
    }

    /// Counts a completed hypercall `nr` of `domid`.
    fn count(&mut self, domid: DomId, nr: u64) {
        let i = match self.tallies.iter().position(|t| t.domid == domid) {
            Some(i) => i,
            None if self.tallies.len() < MAX_TALLIED_DOMAINS && self.tallies.try_reserve(1).is_ok() => {
                self.tallies.push(DomainTally { domid, calls: [0; tally::BUCKETS] });
                self.tallies.len() - 1
            }
            None => {
                self.untallied += 1;
                return;
            }
        };
        self.tallies[i].calls[tally::bucket(nr)] += 1;
    }

    /// Counts one hypercall; true when an audit is due.
    #[inline]
    fn tick(&mut self) -> bool {
        self.hypercalls += 1;
        self.left -= 1;
        if self.left == 0 {
            self.left = self.every;
            return true;
        }
        false
    }
}

impl<P: Platform> Hypervisor<P> {
    /// Every reference to a frame held outside the page tables: the page-table bases of the
    /// vCPUs of domains not being destroyed (a general and an L4 type reference each, checked
    /// as roots), their GDT and LDT frames (a general and a descriptor-table type reference each),
    /// their registered `vcpu_info` frames (a general and a writable type reference), and
    /// every grant mapping (a general reference, and a type reference when writable).
    pub fn external_refs(&self) -> Vec<ExternalRef> {
        let mut ext = crate::grant::external_refs(&self.domains);
        for d in self.domains.values().filter(|d| d.state != DomainState::Dying) {
            for v in &d.vcpus {
                ext.extend(v.held_bases().map(|m| ExternalRef::root(m, d.id)));
                ext.extend(
                    v.gdt_frames.iter().chain(&v.ldt_frames).map(|&mfn| ExternalRef::mapping(mfn, true)),
                );
                // A registered vcpu_info frame (a general and a writable type reference).
                ext.extend(v.vcpu_info_frame.map(|mfn| ExternalRef { mfn, typed: true, root_of: None }));
            }
        }
        ext
    }

    /// Checks the whole frame table now (see [`FrameTable::audit`]).
    ///
    /// [`FrameTable::audit`]: crate::mm::frame_table::FrameTable::audit
    pub fn audit_frames(&self) -> Result<(), String> {
        self.frames.audit(self.mem(), &self.external_refs())
    }

    /// The per-hypercall hook: counts the call (in the tally when it `completed`, not when
    /// it will continue) and audits when one is due. A failed audit names the call that
    /// preceded it and stops the machine as a hypervisor fault.
    #[inline]
    pub(crate) fn audit_after_hypercall(&mut self, nr: u64, completed: bool) {
        if self.audit.is_on() {
            self.audit_count(nr, completed);
        }
    }

    #[inline(never)]
    fn audit_count(&mut self, nr: u64, completed: bool) {
        if completed {
            let id = self.current().domid;
            self.audit.count(id, nr);
        }
        if self.audit.tick() {
            self.audit_now(nr);
        }
    }

    #[inline(never)]
    fn audit_now(&mut self, nr: u64) {
        match self.audit_frames() {
            Ok(()) => self.audit.passed += 1,
            Err(e) => {
                let r = self.current();
                let n = self.audit.hypercalls;
                self.log(format_args!(
                    "AUDIT FAILED after hypercall {n} (d{}v{} {}): {e}",
                    r.domid.0,
                    r.vcpu,
                    nr::name(nr)
                ));
                self.audit_halt();
            }
        }
    }

    /// The last audit, when the machine stops: reports the tally as `key=value` fields.
    pub(crate) fn audit_at_stop(&mut self) {
        if !self.audit.is_on() {
            return;
        }
        match self.audit_frames() {
            Ok(()) => {
                self.audit.passed += 1;
                let (passed, hypercalls, every) =
                    (self.audit.passed, self.audit.hypercalls, self.audit.every);
                self.log_tallies();
                self.log(format_args!("audit: clean passed={passed} hypercalls={hypercalls} every={every}"));
            }
            Err(e) => {
                self.log(format_args!("AUDIT FAILED when the machine stopped: {e}"));
                self.audit_halt();
            }
        }
    }

    /// The tallies as `audit: d<N> calls key=value...` lines (several per domain, buckets
    /// that counted nothing left out), then the domains not tallied.
    fn log_tallies(&mut self) {
        let tallies = core::mem::take(&mut self.audit.tallies);
        for t in &tallies {
            let total: u64 = t.calls.iter().sum();
            self.log(format_args!("audit: d{} calls total={total}", t.domid.0));
            let used: Vec<usize> = (0..tally::BUCKETS).filter(|&b| t.calls[b] != 0).collect();
            for line in used.chunks(TALLY_PER_LINE) {
                self.log(format_args!("audit: d{} calls{}", t.domid.0, Fields(line, &t.calls)));
            }
        }
        self.audit.tallies = tallies;
        let untallied = self.audit.untallied;
        if untallied != 0 {
            self.log(format_args!("audit: untallied calls={untallied}"));
        }
    }

    fn audit_halt(&mut self) {
        self.halt_hypervisor_fault();
    }
}

/// ` key=value` for each bucket in the list.
struct Fields<'a>(&'a [usize], &'a [u64; tally::BUCKETS]);

impl core::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in self.0 {
            write!(f, " {}={}", tally::Key(b), self.1[b])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::exit_code;
    use crate::hypercall::{dispatch, Hc};
    use crate::testkit::{console, run_as, two_domains};
    use hypercall_abi::DomId;

    #[test]
    fn command_line() {
        assert_eq!(Audit::from_cmdline("trace=1"), Ok(None));
        assert_eq!(Audit::from_cmdline("floor=10 audit=1000"), Ok(Some(Audit::every(1000))));
        assert!(Audit::from_cmdline("audit=0").is_err());
        assert!(Audit::from_cmdline("audit=x").is_err());
        assert!(Audit::from_cmdline("audit=99999999999999").is_err());
    }

    fn xen_version(hv: &mut crate::testkit::TestHv) {
        // Through the same entry the arch layer uses for every hypercall but the fast one.
        let r = hv.hypercall_general(nr::XEN_VERSION, &[1, 0, 0, 0, 0]).rax;
        assert_ne!(r as i64, hypercall_abi::Errno::ENOSYS.to_ret());
    }

    #[test]
    fn audits_every_n_hypercalls_and_at_stop() {
        let mut hv = two_domains();
        hv.audit = Audit::every(3);
        run_as(&mut hv, DomId(1));
        for _ in 0..7 {
            xen_version(&mut hv);
        }
        assert_eq!((hv.audit.hypercalls, hv.audit.passed), (7, 2));
        assert!(!hv.halting());
        // dom0 powering off stops the machine: one more audit, and the tally on the console.
        run_as(&mut hv, DomId::DOM0);
        let p = crate::testkit::SCRATCH_VA;
        hv.guest().write_obj(p, &hypercall_abi::sched::SchedShutdown { reason: 0 }).unwrap();
        assert_eq!(dispatch(&mut hv, nr::SCHED_OP, [2, p, 0, 0, 0], None), Hc::Ret(0));
        let out = console(&hv);
        assert!(out.contains("audit: clean passed=3 hypercalls=7 every=3"), "{out}");
        // The tally: d1's seven calls (dom0's shutdown went straight to the dispatcher).
        assert!(
            out.contains("audit: d1 calls total=7\n") && out.contains("audit: d1 calls xen_version=7\n"),
            "{out}"
        );
        let mut frame = crate::vcpu::GuestFrame::default();
        assert_eq!(hv.resume(&mut frame), crate::hv::Resume::Halt(exit_code::POWEROFF));
    }

    #[test]
    fn a_broken_count_stops_the_machine_naming_the_call() {
        let mut hv = two_domains();
        hv.audit = Audit::every(1);
        run_as(&mut hv, DomId(1));
        xen_version(&mut hv);
        assert_eq!(hv.audit.passed, 1);
        // A reference nobody accounts for: as if a hypercall had taken one and lost it.
        let l4 = hv.domains[&DomId(1)].vcpus[0].kernel_l4;
        hv.frames.get_page(l4, DomId(1)).unwrap();
        let slow = hv.hypercall_general(nr::XEN_VERSION, &[1, 0, 0, 0, 0]).slow();
        assert!(slow, "the exit path must run to stop the machine");
        let mut frame = crate::vcpu::GuestFrame::default();
        assert_eq!(hv.resume(&mut frame), crate::hv::Resume::Halt(exit_code::HYPERVISOR_FAULT));
        let out = console(&hv);
        assert!(out.contains("AUDIT FAILED after hypercall 2 (d1v0 xen_version): frame"), "{out}");
    }

    #[test]
    fn tallies_by_domain_and_number_with_a_bounded_table() {
        let mut a = Audit::every(100);
        a.count(DomId(1), nr::MMU_UPDATE);
        a.count(DomId(1), nr::MMU_UPDATE);
        a.count(DomId(2), 200);
        a.count(DomId(1), u64::MAX);
        assert_eq!(a.tallies.len(), 2);
        assert_eq!(a.tallies[0].calls[nr::MMU_UPDATE as usize], 2);
        assert_eq!(a.tallies[0].calls[tally::COUNTED], 1);
        assert_eq!(a.tallies[1].calls[tally::COUNTED], 1);
        for d in 3..100 {
            a.count(DomId(d), nr::SCHED_OP);
        }
        assert_eq!(a.tallies.len(), MAX_TALLIED_DOMAINS);
        assert_eq!(a.untallied, 100 - 1 - MAX_TALLIED_DOMAINS as u64);
    }

    #[test]
    fn off_by_default_and_costs_no_audit() {
        let mut hv = two_domains();
        run_as(&mut hv, DomId(1));
        xen_version(&mut hv);
        assert!(!hv.audit.is_on());
        assert_eq!((hv.audit.hypercalls, hv.audit.passed), (0, 0));
    }
}
