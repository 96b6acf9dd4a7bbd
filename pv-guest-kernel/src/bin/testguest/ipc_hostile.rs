//! `ipc-hostile`: a domU abusing event channels and grant tables. Every attempt must get the
//! error Xen gives (a `-errno` from `event_channel_op`, a `GNTST_*` status in the grant op)
//! and nothing else may happen: the domain keeps running and dom0 powers off normally.
//!
//! Grant cases work on the domain's own grants: it grants a page to dom0 (so mapping it
//! itself names the wrong domain), a page read-only to itself (so a writable map is refused),
//! and maps, unmaps and copies through its own table.

use super::cases::Cases;
use hypercall_abi::event_channel::{
    op as evtop, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use hypercall_abi::grant_table::{
    gntmap, gntst, op as gntop, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabSetVersion,
    GnttabUnmapGrantRef,
};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::virq;
use hypercall_abi::{DomId, Errno, GrantRef, Port};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{events, gnttab, hypercall};

/// Where grant maps land (a page with its own L1).
const MAP_VA: u64 = pv_guest_kernel::va::TEST_HOSTILE_MAPS;

fn evtchn<T: zerocopy::IntoBytes + zerocopy::FromBytes>(cmd: u32, arg: &mut T) -> i64 {
    hypercall::event_channel_op(cmd, arg)
}

fn grant_op<T>(cmd: u32, arg: &mut T) -> i64 {
    hypercall::hypercall5(nr::GRANT_TABLE_OP, u64::from(cmd), arg as *mut T as u64, 1, 0, 0)
}

const EINVAL: i64 = -(Errno::EINVAL.0 as i64);
const EEXIST: i64 = -(Errno::EEXIST.0 as i64);
const ENOSYS: i64 = -(Errno::ENOSYS.0 as i64);
const ESRCH: i64 = -(Errno::ESRCH.0 as i64);

pub fn run() {
    let mut c = Cases::new("ipc-hostile");
    events_cases(&mut c);
    grant_cases(&mut c);
    c.report();
}

fn events_cases(c: &mut Cases) {
    for (tag, p) in [
        ("send-port-0", 0u32),
        ("send-port-beyond-table", 1023),
        ("send-port-4096", 4096),
        ("send-port-max", u32::MAX),
    ] {
        c.case(tag, evtchn(evtop::SEND, &mut EvtchnSend { port: Port(p) }), EINVAL);
    }
    c.case("close-port-beyond-limit", evtchn(evtop::CLOSE, &mut EvtchnClose { port: Port(5000) }), EINVAL);
    c.case(
        "unmask-port-beyond-limit",
        evtchn(evtop::UNMASK, &mut EvtchnUnmask { port: Port(70_000) }),
        EINVAL,
    );
    // A VIRQ bound twice, an out-of-range VIRQ, a vCPU that does not exist.
    // (The runtime's clock may have bound VIRQ_TIMER already; either way it is bound after
    // the first attempt.)
    let mut b = EvtchnBindVirq { virq: virq::TIMER, vcpu: 0, port: Port(0) };
    let bound = (evtchn(evtop::BIND_VIRQ, &mut b) == 0).then_some(b.port);
    let mut again = EvtchnBindVirq { virq: virq::TIMER, vcpu: 0, port: Port(0) };
    c.case("bind-virq-timer-twice", evtchn(evtop::BIND_VIRQ, &mut again), EEXIST);
    c.case(
        "bind-virq-out-of-range",
        evtchn(evtop::BIND_VIRQ, &mut EvtchnBindVirq { virq: 999, vcpu: 0, port: Port(0) }),
        EINVAL,
    );
    c.case(
        "bind-virq-bad-vcpu",
        evtchn(evtop::BIND_VIRQ, &mut EvtchnBindVirq { virq: virq::TIMER, vcpu: 77, port: Port(0) }),
        -(Errno::ENOENT.0 as i64),
    );
    // Binding a port that is already bound, or bound for somebody else, or of a domain that
    // does not exist.
    if let Ok(rx) = events::alloc_unbound(DomId::SELF) {
        let tx = events::bind_interdomain(DomId::SELF, rx);
        let mut twice =
            EvtchnBindInterdomain { remote_dom: DomId::SELF, remote_port: rx, ..Default::default() };
        c.case("bind-interdomain-already-bound", evtchn(evtop::BIND_INTERDOMAIN, &mut twice), EINVAL);
        // Send on a port after closing it.
        if let Ok(tx) = tx {
            let _ = events::close(tx);
            c.case("send-on-closed-port", evtchn(evtop::SEND, &mut EvtchnSend { port: tx }), EINVAL);
            c.case("close-closed-port", evtchn(evtop::CLOSE, &mut EvtchnClose { port: tx }), EINVAL);
        } else {
            c.fail(alloc::string::String::from("loopback bind failed"));
        }
        let _ = events::close(rx);
    }
    // The console port was offered to dom0, not to us.
    let mut stolen =
        EvtchnBindInterdomain { remote_dom: DomId::SELF, remote_port: Port(2), ..Default::default() };
    c.case("bind-port-offered-to-dom0", evtchn(evtop::BIND_INTERDOMAIN, &mut stolen), EINVAL);
    let mut nodom =
        EvtchnBindInterdomain { remote_dom: DomId(400), remote_port: Port(1), ..Default::default() };
    c.case("bind-to-missing-domain", evtchn(evtop::BIND_INTERDOMAIN, &mut nodom), ESRCH);
    // Status of another domain's port is dom0's business.
    let mut st = EvtchnStatus { dom: DomId(0), port: Port(1), ..Default::default() };
    c.case("status-of-dom0-port", evtchn(evtop::STATUS, &mut st), -(Errno::EPERM.0 as i64));
    c.case("unknown-evtchn-op", evtchn(99, &mut EvtchnSend { port: Port(1) }), ENOSYS);
    if let Some(p) = bound {
        let _ = events::close(p);
    }
}

fn grant_cases(c: &mut Cases) {
    if let Err(e) = gnttab::init(gnttab::DEFAULT_FRAMES) {
        return c.fail(alloc::format!("grant table: {e}"));
    }
    let (Ok(a), Ok(scratch)) = (mm::alloc_page(), mm::alloc_page()) else {
        return c.fail(alloc::string::String::from("cannot allocate pages"));
    };
    if let Err(e) = mm::map_page(MAP_VA, scratch.mfn, pt::PAGE_KERNEL | pt::NX) {
        return c.fail(alloc::format!("cannot map the scratch page: {e}"));
    }
    // Our domain id, from a loopback port's status.
    let me = match events::alloc_unbound(DomId::SELF) {
        Ok(p) => {
            let mut st = EvtchnStatus { dom: DomId::SELF, port: p, ..Default::default() };
            let _ = evtchn(evtop::STATUS, &mut st);
            let _ = events::close(p);
            st.unbound_dom()
        }
        Err(e) => return c.fail(alloc::format!("alloc_unbound: {e}")),
    };
    let map = |gref: GrantRef, dom: DomId, flags: u32| {
        let mut m = GnttabMapGrantRef { host_addr: MAP_VA, flags, ref_: gref, dom, ..Default::default() };
        let r = grant_op(gntop::MAP_GRANT_REF, &mut m);
        (r, m)
    };
    let unmap = |handle: u32| {
        let mut u = GnttabUnmapGrantRef { host_addr: MAP_VA, handle, ..Default::default() };
        let r = grant_op(gntop::UNMAP_GRANT_REF, &mut u);
        (r, u.status)
    };
    // A grant for dom0, mapped by us: the entry names another domain.
    if let Ok(to_dom0) = gnttab::grant_access(DomId::DOM0, a.mfn, false) {
        let (r, m) = map(to_dom0, me, gntmap::HOST_MAP);
        c.status_case("map-grant-for-another-domain", m.status, gntst::GENERAL_ERROR);
        c.case("map-grant-for-another-domain-rc", r, 0);
        let _ = gnttab::end_access(to_dom0);
    }
    // A read-only grant mapped writable.
    if let Ok(ro) = gnttab::grant_access(me, a.mfn, true) {
        let (_, m) = map(ro, me, gntmap::HOST_MAP);
        c.status_case("map-readonly-grant-writable", m.status, gntst::GENERAL_ERROR);
        let (_, m) = map(ro, me, gntmap::HOST_MAP | gntmap::READONLY);
        c.status_case("map-readonly-grant-readonly", m.status, gntst::OKAY);
        if m.status == gntst::OKAY {
            // While mapped, the grant cannot be revoked.
            c.case("revoke-while-mapped", i64::from(gnttab::end_access(ro).is_err()), 1);
            let (_, st) = unmap(m.handle);
            c.status_case("unmap", st, gntst::OKAY);
            let (_, st) = unmap(m.handle);
            c.status_case("unmap-twice", st, gntst::BAD_HANDLE);
            c.case("revoke-after-unmap", i64::from(gnttab::end_access(ro).is_err()), 0);
        }
    }
    let (_, st) = unmap(0xdead);
    c.status_case("unmap-bad-handle", st, gntst::BAD_HANDLE);
    let (_, m) = map(GrantRef(1_000_000), me, gntmap::HOST_MAP);
    c.status_case("map-unknown-gref", m.status, gntst::BAD_GNTREF);
    let (_, m) = map(GrantRef(9), DomId(400), gntmap::HOST_MAP);
    c.status_case("map-missing-domain", m.status, gntst::BAD_DOMAIN);
    // Copies that would cross the end of a page.
    let mut copy = GnttabCopy {
        source: GnttabCopyPtr::gmfn(a.mfn.0, DomId::SELF, 4000),
        dest: GnttabCopyPtr::gmfn(scratch.mfn.0, DomId::SELF, 0),
        len: 200,
        ..Default::default()
    };
    let _ = grant_op(gntop::COPY, &mut copy);
    c.status_case("copy-source-offset-plus-len-past-page", copy.status, gntst::BAD_COPY_ARG);
    let mut copy2 = GnttabCopy {
        source: GnttabCopyPtr::gmfn(a.mfn.0, DomId::SELF, 0),
        dest: GnttabCopyPtr::gmfn(scratch.mfn.0, DomId::SELF, 4095),
        len: 2,
        ..Default::default()
    };
    let _ = grant_op(gntop::COPY, &mut copy2);
    c.status_case("copy-dest-offset-plus-len-past-page", copy2.status, gntst::BAD_COPY_ARG);
    // Version 2 is not offered, as on a Xen booted with `gnttab=max-ver:1` (the configuration
    // the differential run gives Xen): ENOSYS, and the table's version (1) written back.
    let mut v = GnttabSetVersion { version: 2 };
    c.case("set-version-2", grant_op(gntop::SET_VERSION, &mut v), ENOSYS);
    c.case("set-version-2.version", i64::from(v.version), 1);
    c.case("unknown-grant-op", grant_op(99, &mut v), ENOSYS);
}
