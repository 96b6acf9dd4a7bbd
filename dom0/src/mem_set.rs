//! dom0's `xl mem-set`: the option `mem-set=<name|domid>:<KiB>[:<KiB>...]` moves a domain's
//! memory through a sequence of targets. Like libxl, dom0 only writes the domain's
//! `memory/target` node (KiB) and watches the domain's page count (`getdomaininfo`'s
//! `tot_pages`); the guest's balloon driver, watching that node, does the moving. The next
//! target is written once the domain holds exactly the previous one (`KiB / 4` pages), so a
//! test sees every step; a target the domain does not reach (below its balloon's floor, above
//! its boot size, or a guest without a balloon) is given up after the page count has stood
//! still for [`STALL_NS`], as `libxl_wait_for_memory_target` gives up when nothing moves.
//!
//! The logic is host-testable: [`MemSet::poll`] takes the time, the domain list and a xenstore
//! client, and returns what happened as [`Note`]s for the caller to log.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hypercall_abi::domctl::XenDomctlGetdomaininfo;
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::cmdline;
use pv_guest_kernel::xenbus::{Transport, TxId, Xenbus};

use crate::domains::domain_name;
use crate::xenstore::path::domain_path;

/// Targets one option may list.
pub const MAX_TARGETS: usize = 16;
/// The largest target accepted, in KiB (1 TiB: far above any domain here, far below overflow).
pub const MAX_TARGET_KIB: u64 = 1 << 30;
/// How long a domain's page count may stand still before its target is given up.
pub const STALL_NS: u64 = 5_000_000_000;

/// The domain a plan is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Id(DomId),
    Name(String),
}

/// A parsed `mem-set=` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub who: Who,
    /// Targets in KiB, in the order they are set.
    pub targets_kib: Vec<u64>,
}

/// Why a `mem-set=` value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No domain before the first `:`.
    NoDomain,
    /// Domain 0 (dom0 has no balloon here) or a reserved domain id.
    BadDomain,
    /// No target after the domain.
    NoTargets,
    /// More than [`MAX_TARGETS`] targets.
    TooManyTargets,
    /// A target that is not a number in `1..=MAX_TARGET_KIB`.
    BadTarget,
}

/// Parses `<name|domid>:<KiB>[:<KiB>...]`. A domain that is all digits is a domid, anything
/// else a name (names never contain `:`).
pub fn parse(v: &str) -> Result<Plan, PlanError> {
    let mut parts = v.split(':');
    let who = parts.next().filter(|w| !w.is_empty()).ok_or(PlanError::NoDomain)?;
    let who = if who.bytes().all(|b| b.is_ascii_digit()) {
        match who.parse::<u16>() {
            Ok(id) if id != 0 && DomId(id).is_real() => Who::Id(DomId(id)),
            _ => return Err(PlanError::BadDomain),
        }
    } else {
        Who::Name(String::from(who))
    };
    let mut targets_kib = Vec::new();
    for t in parts {
        if targets_kib.len() == MAX_TARGETS {
            return Err(PlanError::TooManyTargets);
        }
        let kib = cmdline::parse_u64(t).filter(|k| (1..=MAX_TARGET_KIB).contains(k));
        targets_kib.push(kib.ok_or(PlanError::BadTarget)?);
    }
    if targets_kib.is_empty() {
        return Err(PlanError::NoTargets);
    }
    Ok(Plan { who, targets_kib })
}

/// The node the toolstack writes a domain's target to.
pub fn target_path(domid: DomId) -> String {
    format!("{}/memory/target", domain_path(u32::from(domid.0)))
}

/// Something [`MemSet::poll`] did or saw, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The domain listing failed; tried again at the next poll.
    ListFailed(Errno),
    /// No domain matches the plan; it is dropped.
    NoSuchDomain(Who),
    /// A target was written.
    Wrote { domid: DomId, name: String, kib: u64 },
    /// Writing a target failed; the plan is dropped.
    WriteFailed { domid: DomId, name: String, kib: u64, err: Errno },
    /// The domain holds the target.
    Reached { domid: DomId, name: String, kib: u64, pages: u64 },
    /// The domain's page count stood still short of the target.
    GaveUp { domid: DomId, name: String, kib: u64, pages: u64 },
    /// The domain shut down or vanished; the plan is dropped.
    Gone { domid: DomId, name: String },
    /// Every target was dealt with.
    Finished { domid: DomId, name: String },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::ListFailed(e) => write!(f, "cannot list domains: {e}"),
            Note::NoSuchDomain(Who::Id(id)) => write!(f, "no domain d{}, nothing done", id.0),
            Note::NoSuchDomain(Who::Name(n)) => write!(f, "no domain named {n}, nothing done"),
            // Figures as `key=value` fields, which the host tests read (xtask::kv).
            Note::Wrote { domid, name, kib } => write!(f, "d{} ({name}) target kib={kib}", domid.0),
            Note::WriteFailed { domid, name, kib, err } => {
                write!(f, "d{} ({name}) writing target {kib} KiB failed: {err}", domid.0)
            }
            Note::Reached { domid, name, kib, pages } => {
                write!(f, "d{} ({name}) reached kib={kib} pages={pages}", domid.0)
            }
            Note::GaveUp { domid, name, kib, pages } => {
                write!(f, "d{} ({name}) short of its target, going on: kib={kib} pages={pages}", domid.0)
            }
            Note::Gone { domid, name } => write!(f, "d{} ({name}) is gone, plan dropped", domid.0),
            Note::Finished { domid, name } => write!(f, "d{} ({name}) done", domid.0),
        }
    }
}

/// The target being waited for.
#[derive(Clone, Copy, Debug)]
struct Wait {
    kib: u64,
    /// The page count last seen, and since when it has been that.
    pages: u64,
    since_ns: u64,
}

/// One `mem-set=` plan being carried out.
#[derive(Debug)]
pub struct MemSet {
    plan: Plan,
    /// The domain, once found.
    domain: Option<(DomId, String)>,
    /// Index of the next target to write.
    next: usize,
    wait: Option<Wait>,
    done: bool,
}

impl MemSet {
    pub fn new(plan: Plan) -> MemSet {
        MemSet { plan, domain: None, next: 0, wait: None, done: false }
    }

    /// The plan of a `mem-set=` value, if there is one.
    pub fn from_option(value: Option<&str>) -> Result<Option<MemSet>, PlanError> {
        value.map(|v| parse(v).map(MemSet::new)).transpose()
    }

    /// True once the plan is over (finished or dropped): polling does nothing more.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Advances the plan at time `now_ns`. `domains` lists every domU (called only while the
    /// plan is active); targets are written through `xb`, which must be privileged (dom0's).
    pub fn poll<T: Transport>(
        &mut self,
        now_ns: u64,
        domains: impl FnOnce() -> Result<Vec<XenDomctlGetdomaininfo>, Errno>,
        xb: &mut Xenbus<T>,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        if self.done {
            return notes;
        }
        let list = match domains() {
            Ok(l) => l,
            Err(e) => {
                notes.push(Note::ListFailed(e));
                return notes;
            }
        };
        let (domid, name) = match &self.domain {
            Some(d) => d.clone(),
            None => {
                let found = list.iter().find(|i| match &self.plan.who {
                    Who::Id(id) => i.domain == *id,
                    Who::Name(n) => domain_name(&i.handle, i.domain) == *n,
                });
                let Some(i) = found else {
                    self.done = true;
                    notes.push(Note::NoSuchDomain(self.plan.who.clone()));
                    return notes;
                };
                let d = (i.domain, domain_name(&i.handle, i.domain));
                self.domain = Some(d.clone());
                d
            }
        };
        let info = list.iter().find(|i| i.domain == domid);
        let Some(pages) = info.filter(|i| !crate::domains::gone(i.flags)).map(|i| i.tot_pages) else {
            self.done = true;
            notes.push(Note::Gone { domid, name });
            return notes;
        };
        loop {
            match self.wait.as_mut() {
                None => {
                    let Some(&kib) = self.plan.targets_kib.get(self.next) else {
                        self.done = true;
                        notes.push(Note::Finished { domid, name });
                        return notes;
                    };
                    let value = format!("{kib}");
                    match xb.write(TxId::NONE, &target_path(domid), value.as_bytes()) {
                        Ok(()) => {
                            notes.push(Note::Wrote { domid, name, kib });
                            self.wait = Some(Wait { kib, pages, since_ns: now_ns });
                        }
                        Err(err) => {
                            self.done = true;
                            notes.push(Note::WriteFailed { domid, name, kib, err });
                        }
                    }
                    return notes;
                }
                Some(w) if pages == w.kib / 4 => {
                    notes.push(Note::Reached { domid, name: name.clone(), kib: w.kib, pages });
                    self.wait = None;
                    self.next += 1;
                }
                Some(w) if pages != w.pages => {
                    (w.pages, w.since_ns) = (pages, now_ns);
                    return notes;
                }
                Some(w) if now_ns.saturating_sub(w.since_ns) >= STALL_NS => {
                    notes.push(Note::GaveUp { domid, name: name.clone(), kib: w.kib, pages });
                    self.wait = None;
                    self.next += 1;
                }
                Some(_) => return notes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_xs;
    use crate::xenstore::toolstack::DomainConfig;
    use crate::xenstore::Xenstore;
    use alloc::rc::Rc;
    use core::cell::RefCell;
    use hypercall_abi::domctl::dominf;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    fn info(id: u16, name: &str, pages: u64, flags: u32) -> XenDomctlGetdomaininfo {
        let mut i = XenDomctlGetdomaininfo::new_zeroed();
        i.domain = DomId(id);
        i.tot_pages = pages;
        i.flags = flags;
        i.handle[..name.len()].copy_from_slice(name.as_bytes());
        i
    }

    /// A store with domain 1 ("tg", 8192 pages) set up as the toolstack does, dom0's client,
    /// and a client acting as the domain, watching its target relatively as the balloon does.
    fn setup() -> (Rc<RefCell<Xenstore>>, Xenbus<local_xs::LocalTransport>, Xenbus<local_xs::LocalTransport>)
    {
        let xs = Rc::new(RefCell::new(Xenstore::default()));
        let cfg = DomainConfig {
            domid: DomId(1),
            name: "tg".into(),
            memory_kb: 32768,
            vcpus: 1,
            store: None,
            console: None,
        };
        xs.borrow_mut().create_domain_nodes(&cfg).unwrap();
        let d0 = local_xs::client(&xs, DomId::DOM0);
        let mut du = local_xs::client(&xs, DomId(1));
        du.watch("memory/target", "balloon").unwrap();
        assert_eq!(du.next_watch_event().unwrap().unwrap().token, "balloon");
        (xs, d0, du)
    }

    fn target(du: &mut Xenbus<local_xs::LocalTransport>) -> String {
        du.read_string(TxId::NONE, "memory/target").unwrap()
    }

    #[test]
    fn parses_the_option() {
        assert_eq!(
            parse("tg:28672:32768"),
            Ok(Plan { who: Who::Name("tg".into()), targets_kib: vec![28672, 32768] })
        );
        assert_eq!(parse("3:0x1000"), Ok(Plan { who: Who::Id(DomId(3)), targets_kib: vec![4096] }));
        assert_eq!(parse("tg"), Err(PlanError::NoTargets));
        assert_eq!(parse(":100"), Err(PlanError::NoDomain));
        assert_eq!(parse("0:100"), Err(PlanError::BadDomain));
        assert_eq!(parse("65535:100"), Err(PlanError::BadDomain));
        assert_eq!(parse("99999:100"), Err(PlanError::BadDomain));
        assert_eq!(parse("tg:0"), Err(PlanError::BadTarget));
        assert_eq!(parse("tg:12k"), Err(PlanError::BadTarget));
        assert_eq!(parse("tg:100:"), Err(PlanError::BadTarget));
        assert_eq!(parse("tg:18446744073709551616"), Err(PlanError::BadTarget));
        assert_eq!(parse(&format!("tg:{}", MAX_TARGET_KIB + 1)), Err(PlanError::BadTarget));
        let many: String = (0..=MAX_TARGETS).map(|_| ":4096").collect();
        assert_eq!(parse(&format!("tg{many}")), Err(PlanError::TooManyTargets));
        assert_eq!(
            parse(&format!("tg{}", &many[":4096".len()..])).map(|p| p.targets_kib.len()),
            Ok(MAX_TARGETS)
        );
    }

    #[test]
    fn from_option() {
        assert!(matches!(MemSet::from_option(None), Ok(None)));
        assert!(matches!(MemSet::from_option(Some("tg:4096")), Ok(Some(m)) if !m.is_done()));
        assert!(matches!(MemSet::from_option(Some("tg:")), Err(PlanError::BadTarget)));
    }

    #[test]
    fn writes_each_target_once_the_previous_is_reached() {
        let (_xs, mut d0, mut du) = setup();
        let mut m = MemSet::new(parse("tg:28672:32768").unwrap());
        let doms = |pages| move || Ok(vec![info(2, "other", 100, 0), info(1, "tg", pages, 0)]);
        let name = String::from("tg");
        assert_eq!(
            m.poll(0, doms(8192), &mut d0),
            vec![Note::Wrote { domid: DomId(1), name: name.clone(), kib: 28672 }]
        );
        // The domain's watch fires and it reads the new value.
        assert_eq!(du.next_watch_event().unwrap().unwrap().token, "balloon");
        assert_eq!(target(&mut du), "28672");
        // Half-way: nothing new is written.
        assert_eq!(m.poll(1, doms(7680), &mut d0), vec![]);
        assert_eq!(du.next_watch_event().unwrap(), None);
        let notes = m.poll(2, doms(7168), &mut d0);
        assert_eq!(
            notes,
            vec![
                Note::Reached { domid: DomId(1), name: name.clone(), kib: 28672, pages: 7168 },
                Note::Wrote { domid: DomId(1), name: name.clone(), kib: 32768 },
            ]
        );
        assert_eq!(target(&mut du), "32768");
        let notes = m.poll(3, doms(8192), &mut d0);
        assert_eq!(notes[1], Note::Finished { domid: DomId(1), name: name.clone() });
        assert!(m.is_done());
        // Done: the domain list is not even asked for.
        assert_eq!(m.poll(4, || panic!("listed after the end"), &mut d0), vec![]);
        assert!(notes.iter().all(|n| !n.to_string().is_empty()));
    }

    #[test]
    fn an_unreachable_target_is_given_up_only_after_a_stall() {
        let (_xs, mut d0, mut du) = setup();
        let mut m = MemSet::new(parse("1:1024:32768").unwrap());
        let doms = |pages| move || Ok(vec![info(1, "tg", pages, 0)]);
        m.poll(0, doms(8192), &mut d0);
        assert_eq!(target(&mut du), "1024");
        // Progress keeps it waiting past the stall time...
        assert_eq!(m.poll(STALL_NS - 1, doms(8192), &mut d0), vec![]);
        assert_eq!(m.poll(STALL_NS + 10, doms(1024), &mut d0), vec![]);
        assert_eq!(m.poll(2 * STALL_NS, doms(1024), &mut d0), vec![]);
        // ...a standstill of STALL_NS ends it, and the next target goes out.
        let notes = m.poll(2 * STALL_NS + 10, doms(1024), &mut d0);
        assert!(matches!(notes[0], Note::GaveUp { kib: 1024, pages: 1024, .. }), "{notes:?}");
        assert!(matches!(notes[1], Note::Wrote { kib: 32768, .. }), "{notes:?}");
        assert_eq!(target(&mut du), "32768");
    }

    #[test]
    fn missing_dying_and_vanished_domains_drop_the_plan() {
        let (_xs, mut d0, _du) = setup();
        let mut m = MemSet::new(parse("nobody:4096").unwrap());
        assert_eq!(
            m.poll(0, || Ok(vec![info(1, "tg", 8192, 0)]), &mut d0),
            vec![Note::NoSuchDomain(Who::Name("nobody".into()))]
        );
        assert!(m.is_done());

        let mut m = MemSet::new(parse("tg:4096").unwrap());
        assert_eq!(m.poll(0, || Err(Errno::EPERM), &mut d0), vec![Note::ListFailed(Errno::EPERM)]);
        assert!(!m.is_done());
        m.poll(1, || Ok(vec![info(1, "tg", 8192, 0)]), &mut d0);
        let notes = m.poll(2, || Ok(vec![info(1, "tg", 8192, dominf::SHUTDOWN)]), &mut d0);
        assert_eq!(notes, vec![Note::Gone { domid: DomId(1), name: "tg".into() }]);

        let mut m = MemSet::new(parse("tg:4096").unwrap());
        m.poll(1, || Ok(vec![info(1, "tg", 8192, 0)]), &mut d0);
        assert!(matches!(m.poll(2, || Ok(vec![]), &mut d0)[..], [Note::Gone { .. }]));
    }

    #[test]
    fn a_refused_write_drops_the_plan() {
        let (xs, _d0, _du) = setup();
        // An unprivileged client may not write another domain's target.
        let mut other = local_xs::client(&xs, DomId(2));
        let mut m = MemSet::new(parse("tg:4096").unwrap());
        let notes = m.poll(0, || Ok(vec![info(1, "tg", 8192, 0)]), &mut other);
        assert!(matches!(notes[..], [Note::WriteFailed { err: Errno::EACCES, .. }]), "{notes:?}");
        assert!(m.is_done());
    }

    proptest! {
        /// Whatever the page counts do, the plan writes its targets in order, each at most
        /// once, never writes the next before the previous was reached or stalled, and ends.
        #[test]
        fn targets_go_out_in_order(
            targets in proptest::collection::vec(1u64..40_000, 1..6),
            steps in proptest::collection::vec((0u64..10_000, 0u64..(2 * STALL_NS)), 1..60),
        ) {
            let (_xs, mut d0, _du) = setup();
            let spec: String = targets.iter().map(|t| format!(":{t}")).collect();
            let mut m = MemSet::new(parse(&format!("tg{spec}")).unwrap());
            let mut now = 0u64;
            let mut written = Vec::new();
            let mut settled = 0usize;
            for (pages, dt) in steps {
                now += dt;
                // Sometimes the domain is exactly where the current target wants it.
                let pages = match written.last() { Some(&k) if pages % 3 == 0 => k / 4, _ => pages };
                for n in m.poll(now, move || Ok(vec![info(1, "tg", pages, 0)]), &mut d0) {
                    match n {
                        Note::Wrote { kib, .. } => {
                            prop_assert_eq!(written.len(), settled, "a target written before the last settled");
                            written.push(kib);
                        }
                        Note::Reached { kib, pages: p, .. } => {
                            prop_assert_eq!(p, kib / 4);
                            settled += 1;
                        }
                        Note::GaveUp { .. } => settled += 1,
                        Note::Finished { .. } => prop_assert_eq!(settled, targets.len()),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
            }
            prop_assert_eq!(&written[..], &targets[..written.len()]);
        }
    }
}
