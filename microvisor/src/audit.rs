//! The frame-table audit at run time: with `audit=<N>` on the hypervisor command line, every
//! Nth hypercall (and once more when the machine stops) recomputes every frame's reference
//! and type counts from scratch ([`FrameTable::audit`]) against the references held outside
//! page tables, and stops the machine with a report at the first inconsistency. Fuzzing
//! campaigns run with it so that a hypercall that breaks the frame table's invariants is
//! caught within N calls of doing so, not when a guest finally exploits it.
//!
//! Off by default. The hypercall fast path in the arch layer never reaches it; the general
//! path pays one test of a counter.
//!
//! [`FrameTable::audit`]: crate::mm::frame_table::FrameTable::audit

use crate::domain::DomainState;
use crate::hv::Hypervisor;
use crate::mm::frame_table::ExternalRef;
use crate::platform::Platform;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::hypercall::nr;

/// Largest `N` of `audit=<N>`.
pub const MAX_EVERY: u64 = 1 << 32;

/// The audit's schedule and tally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Audit every this many hypercalls (0: off).
    every: u64,
    /// Hypercalls left until the next audit.
    left: u64,
    /// Hypercalls seen while on.
    pub hypercalls: u64,
    /// Audits that found the frame table consistent.
    pub passed: u64,
}

impl Audit {
    /// An audit every `every` hypercalls (`every` > 0).
    pub fn every(every: u64) -> Audit {
        Audit { every, left: every, hypercalls: 0, passed: 0 }
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
    /// as roots), their GDT frames (a general and a descriptor-table type reference each), and
    /// every grant mapping (a general reference, and a type reference when writable).
    pub fn external_refs(&self) -> Vec<ExternalRef> {
        let mut ext = crate::grant::external_refs(&self.domains);
        for d in self.domains.values().filter(|d| d.state != DomainState::Dying) {
            for v in &d.vcpus {
                ext.extend(v.held_bases().map(|m| ExternalRef::root(m, d.id)));
                ext.extend(v.gdt_frames.iter().map(|&mfn| ExternalRef { mfn, typed: true, root_of: None }));
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

    /// The per-hypercall hook: counts the call and audits when one is due. A failed audit
    /// names the call that preceded it and stops the machine as a hypervisor fault.
    #[inline]
    pub(crate) fn audit_after_hypercall(&mut self, nr: u64) {
        if self.audit.is_on() && self.audit.tick() {
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
                let a = self.audit;
                self.log(format_args!(
                    "audit: clean passed={} hypercalls={} every={}",
                    a.passed, a.hypercalls, a.every
                ));
            }
            Err(e) => {
                self.log(format_args!("AUDIT FAILED when the machine stopped: {e}"));
                self.audit_halt();
            }
        }
    }

    fn audit_halt(&mut self) {
        self.halt_hypervisor_fault();
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
        let (r, _) = hv.hypercall_general(nr::XEN_VERSION, 1, 0, 0, 0, 0);
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
        assert!(console(&hv).contains("audit: clean passed=3 hypercalls=7 every=3"), "{}", console(&hv));
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
        let (_, slow) = hv.hypercall_general(nr::XEN_VERSION, 1, 0, 0, 0, 0);
        assert!(slow, "the exit path must run to stop the machine");
        let mut frame = crate::vcpu::GuestFrame::default();
        assert_eq!(hv.resume(&mut frame), crate::hv::Resume::Halt(exit_code::HYPERVISOR_FAULT));
        let out = console(&hv);
        assert!(out.contains("AUDIT FAILED after hypercall 2 (d1v0 xen_version): frame"), "{out}");
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
