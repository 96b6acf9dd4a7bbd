//! dom0's toolstack for the domains the hypervisor built at boot, as Xen's `init-dom0less`
//! does, and the loop that serves them.
//!
//! Adopting a domU: it is enumerated (`XEN_DOMCTL_getdomaininfo`), its xenstore and console
//! rings and ports are learnt (`HVMOP_get_param`; the builder allocates the two ports
//! unbound for dom0, but dom0 reads them rather than assuming), its nodes are written and it
//! is INTRODUCEd to xenstored; then every service hears of it ([`Service::domain_added`]).
//! When it shuts down (VIRQ_DOM_EXC, or the periodic re-check), every service is told to
//! release what it holds for it ([`Service::domain_gone`]: its console's last words, its
//! xenstore RELEASE, which fires `@releaseDomain` for the backends) and it is destroyed.
//!
//! `release-watch=<name|id>[,...]` on dom0's command line lets those domUs watch
//! `@releaseDomain` ([`Xenstore::grant_release_watch`], what `xenstore-chmod` gives a driver
//! domain under Xen): a domU beside others learns that one was released without reading
//! directories it may not read (tests/tests/linux_beside.rs).
//!
//! The loop ([`Toolstack::run`]) polls the services ([`Services::poll`]) and blocks in
//! `SCHEDOP_block` between events, so an idle dom0 costs no CPU.
//!
//! [`Service`]: crate::services::Service
//! [`Service::domain_added`]: crate::services::Service::domain_added
//! [`Service::domain_gone`]: crate::services::Service::domain_gone
//! [`Xenstore::grant_release_watch`]: dom0::xenstore::Xenstore::grant_release_watch

use crate::domctl;
use crate::services::{BuiltRing, DomainInfo, Services};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dom0::domains::{describe, domain_name, gone, names, parse_domain_list, vcpu_count};
use dom0::xenstore::toolstack::{Console, DomainConfig, StoreRing};
use dom0::xenstore::{Caller, Request, Xenstore};
use hypercall_abi::domctl::XenDomctlGetdomaininfo;
use hypercall_abi::hvm::param;
use hypercall_abi::{DomId, Errno, Mfn, Port};
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

/// How long [`Toolstack::run`] sleeps at most before re-checking the domains anyway.
const RECHECK_NS: u64 = 200_000_000;

/// Raised by VIRQ_DOM_EXC (ring ports mark `PENDING` instead): some domain changed state.
static EXC: AtomicBool = AtomicBool::new(false);
/// Polls made and the time spent in them (reported when dom0 stops serving).
static POLLS: AtomicU64 = AtomicU64::new(0);
static POLL_NS: AtomicU64 = AtomicU64::new(0);

/// To be called from the VIRQ_DOM_EXC handler.
pub fn on_dom_exc() {
    EXC.store(true, Ordering::SeqCst);
}

/// The toolstack: the domains it adopted and the services serving them.
pub struct Toolstack {
    xs: Rc<RefCell<Xenstore>>,
    /// Adopted domUs still alive, by name.
    doms: BTreeMap<DomId, String>,
    services: Services,
    /// `release-watch=`: the domUs (names or ids) that may watch `@releaseDomain`.
    release_watchers: Vec<String>,
}

impl Toolstack {
    /// Writes dom0's own nodes and adopts every domU the hypervisor built (`domus`).
    pub fn start(
        xs: Rc<RefCell<Xenstore>>,
        services: Services,
        domus: Vec<XenDomctlGetdomaininfo>,
        cmd: &str,
    ) -> Self {
        let release_watchers = parse_domain_list(cmdline::get(cmd, "release-watch")).unwrap_or_default();
        let mut t = Toolstack { xs, doms: BTreeMap::new(), services, release_watchers };
        {
            let mut xs = t.xs.borrow_mut();
            for (k, v) in [("name", "Domain-0"), ("domid", "0")] {
                let req =
                    Request::Write { path: format!("/local/domain/0/{k}"), value: v.as_bytes().to_vec() };
                let _ = xs.execute(Caller::DOM0, req);
            }
        }
        for info in domus {
            t.adopt(&info);
        }
        println!("dom0: xenstored up, {} domU(s) introduced", t.doms.len());
        t
    }

    /// Domains still served.
    pub fn domus_left(&self) -> usize {
        self.doms.len()
    }

    /// The toolstack's part for one boot-built domain: nodes, INTRODUCE, then the services.
    fn adopt(&mut self, info: &XenDomctlGetdomaininfo) {
        let id = info.domain;
        let name = domain_name(&info.handle, info.domain);
        if gone(info.flags) {
            println!("dom0: d{} ({name}) already {}, destroying it", id.0, describe(info.flags));
            self.services.domain_gone(id);
            if let Err(e) = domctl::destroy(id) {
                println!("dom0: destroying d{} failed: {e}", id.0);
            }
            return;
        }
        let ring = |pfn, evtchn| -> Result<Option<BuiltRing>, Errno> {
            let mfn = domctl::hvm_param(id, pfn)?;
            let port = Port(u32::try_from(domctl::hvm_param(id, evtchn)?).unwrap_or(0));
            Ok((mfn != 0).then_some(BuiltRing { mfn: Mfn(mfn), port }))
        };
        let rings = ring(param::STORE_PFN, param::STORE_EVTCHN)
            .and_then(|s| Ok((s, ring(param::CONSOLE_PFN, param::CONSOLE_EVTCHN)?)));
        let (store, console) = match rings {
            Ok(r) => r,
            Err(e) => {
                println!("dom0: d{} ({name}): no ring parameters ({e}); not served", id.0);
                return;
            }
        };
        let cfg = DomainConfig {
            domid: id,
            name: name.clone(),
            memory_kb: info.tot_pages.saturating_mul(4),
            vcpus: vcpu_count(info),
            store: store.map(|r| StoreRing { gfn: r.mfn.0, port: r.port }),
            console: console.map(|r| Console {
                gfn: r.mfn.0,
                port: r.port,
                backend: DomId::DOM0,
                kind: String::from("xenconsoled"),
                limit: None,
            }),
        };
        if let Err(e) = self.xs.borrow_mut().create_domain_nodes(&cfg) {
            println!("dom0: d{} ({name}): writing its nodes failed: {e}", id.0);
        }
        // Before INTRODUCE: the grant's own watch event is nobody's business yet.
        if self.release_watchers.iter().any(|w| names(w, &name, id)) {
            match self.xs.borrow_mut().grant_release_watch(id) {
                Ok(()) => println!("dom0: d{} ({name}) may watch @releaseDomain", id.0),
                Err(e) => println!("dom0: d{} ({name}): granting @releaseDomain failed: {e}", id.0),
            }
        }
        if let Some(r) = store {
            if let Err(e) = self.xs.borrow_mut().introduce_domain(id, r.mfn.0, r.port) {
                println!("dom0: d{} ({name}): INTRODUCE failed: {e}", id.0);
            }
        }
        self.doms.insert(id, name.clone());
        let served = self.services.domain_added(&DomainInfo { id, name: name.clone(), console });
        println!("dom0: d{} ({name}) introduced: {}", id.0, served.join(", "));
    }

    /// Finds the domUs that shut down (or vanished) and retires them.
    fn check_domains(&mut self) {
        let list = match domctl::domus() {
            Ok(l) => l,
            Err(e) => {
                println!("dom0: cannot list domains: {e}");
                return;
            }
        };
        let ids: Vec<DomId> = self.doms.keys().copied().collect();
        for id in ids {
            match list.iter().find(|i| i.domain == id) {
                Some(info) if gone(info.flags) => self.retire(id, &describe(info.flags)),
                Some(_) => {}
                None => self.retire(id, "gone"),
            }
        }
    }

    /// Tells every service, then destroys the domain.
    fn retire(&mut self, id: DomId, how: &str) {
        let Some(name) = self.doms.remove(&id) else { return };
        self.services.domain_gone(id);
        println!("dom0: d{} ({name}) {how}", id.0);
        match domctl::destroy(id) {
            Ok(()) => println!("dom0: d{} released and destroyed", id.0),
            Err(e) => println!("dom0: destroying d{} failed: {e}", id.0),
        }
    }

    /// One round of work: domain state changes, then the services until nothing moves.
    pub fn poll(&mut self) {
        let t0 = time::now_ns();
        if EXC.swap(false, Ordering::SeqCst) {
            self.check_domains();
        }
        self.services.poll();
        POLL_NS.fetch_add(time::now_ns().saturating_sub(t0), Ordering::Relaxed);
        POLLS.fetch_add(1, Ordering::Relaxed);
    }

    /// Serves everything until every domU is gone, then prints the services' figures.
    pub fn run(&mut self) {
        let mut last_check = time::now_ns();
        loop {
            self.poll();
            if self.doms.is_empty() {
                println!(
                    "dom0: control plane: {} polls, {} us in them",
                    POLLS.load(Ordering::Relaxed),
                    POLL_NS.load(Ordering::Relaxed) / 1000
                );
                for (_, line) in self.services.reports() {
                    println!("{line}");
                }
                return;
            }
            let wait = self.services.poll_every_ns().map_or(RECHECK_NS, |p| p.min(RECHECK_NS));
            let deadline = time::now_ns().saturating_add(wait);
            let woke = events::block_until(
                || EXC.load(Ordering::SeqCst) || self.services.has_work(),
                Some(deadline),
            );
            if woke.is_err() {
                hypercall::yield_cpu();
            }
            // A missed VIRQ must not leave a dead domain served forever.
            if time::now_ns().saturating_sub(last_check) >= RECHECK_NS {
                last_check = time::now_ns();
                EXC.store(true, Ordering::SeqCst);
            }
        }
    }
}
