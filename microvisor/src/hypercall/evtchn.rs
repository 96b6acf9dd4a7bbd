//! `event_channel_op` and the event paths every other part of the hypervisor uses to notify a
//! domain (interdomain sends, VIRQs, wake-ups of blocked vCPUs).

use crate::event::{is_global_virq, PortState};
use crate::hv::Hypervisor;
use crate::irq::IrqOp;
use crate::platform::Platform;
use crate::sched::VcpuRef;
use crate::vcpu::RunState;
use hypercall_abi::event_channel::{
    evtchnstat, op, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu,
    EvtchnBindVirq, EvtchnClose, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use hypercall_abi::xen::{resolve_domid, virq};
use hypercall_abi::{DomId, Errno, Port};

/// Event delivery, used by hypercalls, the timer and domain lifecycle.
pub trait EvtchnOps {
    /// Marks `port` of `domid` pending and wakes the vCPU it notifies.
    fn evtchn_set_pending(&mut self, domid: DomId, port: Port);
    /// Raises per-vCPU VIRQ `v` on `r`, if the guest bound it.
    fn send_vcpu_virq(&mut self, r: VcpuRef, v: u32);
    /// Raises global VIRQ `v` in `domid`, if bound.
    fn send_global_virq(&mut self, domid: DomId, v: u32);
    /// Makes a blocked vCPU runnable.
    fn kick_vcpu(&mut self, r: VcpuRef);
}

impl<P: Platform> EvtchnOps for Hypervisor<P> {
    fn evtchn_set_pending(&mut self, domid: DomId, port: Port) {
        let Some(d) = self.domains.get(&domid) else { return };
        let Ok(ch) = d.evtchn.get(port) else { return };
        let vcpu = ch.notify_vcpu;
        if self.trace.is_on() {
            let tsc = self.plat.tsc();
            self.trace.record(&hypercall_abi::microvisor::trace::Record::EventSend {
                tsc,
                dom: domid.0,
                port: port.0,
            });
        }
        let d = &self.domains[&domid];
        if d.bitmaps().set_pending(self.plat.mem(), vcpu, port) {
            self.kick_vcpu(VcpuRef { domid, vcpu });
        }
    }

    fn send_vcpu_virq(&mut self, r: VcpuRef, v: u32) {
        let port = self.domains.get(&r.domid).and_then(|d| d.evtchn.virq_port(r.vcpu, v));
        if let Some(p) = port {
            self.evtchn_set_pending(r.domid, p);
        }
    }

    fn send_global_virq(&mut self, domid: DomId, v: u32) {
        let port = self
            .domains
            .get(&domid)
            .and_then(|d| (0..d.evtchn.nr_vcpus()).find_map(|c| d.evtchn.virq_port(c, v)));
        if let Some(p) = port {
            self.evtchn_set_pending(domid, p);
        }
    }

    fn kick_vcpu(&mut self, r: VcpuRef) {
        let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) else { return };
        if v.state == RunState::Blocked {
            v.state = RunState::Runnable;
            self.sched.wake(r);
        }
    }
}

pub fn event_channel_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    let me = hv.current().domid;
    match cmd as u32 {
        op::ALLOC_UNBOUND => {
            let mut a: EvtchnAllocUnbound = hv.guest().read_obj(arg)?;
            let dom = resolve_domid(a.dom, me);
            if dom != me && !hv.cur_dom().privileged {
                return Err(Errno::EPERM);
            }
            let remote = resolve_domid(a.remote_dom, me);
            let d = hv.domains.get_mut(&dom).ok_or(Errno::ESRCH)?;
            let port = d.evtchn.alloc(PortState::Unbound { remote }, 0)?;
            a.port = port;
            if let Err(e) = hv.guest().write_obj(arg, &a) {
                let _ = hv.domains.get_mut(&dom).map(|d| d.evtchn.free(port));
                return Err(e);
            }
            Ok(0)
        }
        op::BIND_INTERDOMAIN => {
            let mut b: EvtchnBindInterdomain = hv.guest().read_obj(arg)?;
            let remote = resolve_domid(b.remote_dom, me);
            let rd = hv.domains.get(&remote).ok_or(Errno::ESRCH)?;
            match rd.evtchn.state(b.remote_port)? {
                PortState::Unbound { remote: allowed } if allowed == me || allowed == DomId::ANY => {}
                _ => return Err(Errno::EINVAL),
            }
            let local = hv
                .cur_dom_mut()
                .evtchn
                .alloc(PortState::Interdomain { remote, remote_port: b.remote_port }, 0)?;
            let rd = hv.domains.get_mut(&remote).expect("checked above");
            rd.evtchn
                .set_state(b.remote_port, PortState::Interdomain { remote: me, remote_port: local })
                .expect("port checked unbound above");
            b.local_port = local;
            // Xen sets the new local port pending so the binder notices anything it missed.
            hv.evtchn_set_pending(me, local);
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::BIND_VIRQ => {
            let mut b: EvtchnBindVirq = hv.guest().read_obj(arg)?;
            if b.virq >= virq::NR_VIRQS {
                return Err(Errno::EINVAL);
            }
            if is_global_virq(b.virq) && b.vcpu != 0 {
                return Err(Errno::EINVAL);
            }
            let d = hv.cur_dom_mut();
            if d.vcpu(b.vcpu).is_none() {
                return Err(Errno::ENOENT);
            }
            let taken = if is_global_virq(b.virq) {
                (0..d.evtchn.nr_vcpus()).any(|c| d.evtchn.virq_port(c, b.virq).is_some())
            } else {
                d.evtchn.virq_port(b.vcpu, b.virq).is_some()
            };
            if taken {
                return Err(Errno::EEXIST);
            }
            b.port = d.evtchn.alloc(PortState::Virq(b.virq), b.vcpu)?;
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::BIND_PIRQ => {
            let mut b: EvtchnBindPirq = hv.guest().read_obj(arg)?;
            match hv.pirqs.get(&b.pirq) {
                Some(p) if p.owner == me && p.port.is_none() => {}
                Some(p) if p.owner == me => return Err(Errno::EBUSY),
                _ => return Err(Errno::EINVAL),
            }
            let port = hv.cur_dom_mut().evtchn.alloc(PortState::Pirq(b.pirq), 0)?;
            b.port = port;
            if let Err(e) = hv.guest().write_obj(arg, &b) {
                let _ = hv.cur_dom_mut().evtchn.free(port);
                return Err(e);
            }
            if let Some(p) = hv.pirqs.get_mut(&b.pirq) {
                p.port = Some(port);
                p.in_service = false;
            }
            hv.queue_irq_op(IrqOp::Route(b.pirq));
            hv.queue_irq_op(IrqOp::Unmask(b.pirq));
            Ok(0)
        }
        op::BIND_IPI => {
            let mut b: EvtchnBindIpi = hv.guest().read_obj(arg)?;
            let d = hv.cur_dom_mut();
            if d.vcpu(b.vcpu).is_none() {
                return Err(Errno::ENOENT);
            }
            b.port = d.evtchn.alloc(PortState::Ipi, b.vcpu)?;
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::CLOSE => {
            let c: EvtchnClose = hv.guest().read_obj(arg)?;
            close_port(hv, me, c.port)?;
            Ok(0)
        }
        op::SEND => {
            let s: EvtchnSend = hv.guest().read_obj(arg)?;
            let ch = *hv.cur_dom().evtchn.get(s.port)?;
            match ch.state {
                PortState::Interdomain { remote, remote_port } => {
                    if hv.domains.get(&remote).is_some_and(|d| d.is_alive()) {
                        hv.evtchn_set_pending(remote, remote_port);
                    }
                    Ok(0)
                }
                PortState::Ipi => {
                    hv.evtchn_set_pending(me, s.port);
                    Ok(0)
                }
                // Xen silently drops a send on a port nobody has bound yet.
                PortState::Unbound { .. } => Ok(0),
                _ => Err(Errno::EINVAL),
            }
        }
        op::STATUS => {
            let mut st: EvtchnStatus = hv.guest().read_obj(arg)?;
            let dom = resolve_domid(st.dom, me);
            if dom != me && !hv.cur_dom().privileged {
                return Err(Errno::EPERM);
            }
            let d = hv.domains.get(&dom).ok_or(Errno::ESRCH)?;
            let state = d.evtchn.state(st.port)?;
            st.vcpu = d.evtchn.get(st.port).map_or(0, |c| c.notify_vcpu);
            st.u = [0; 8];
            st.status = match state {
                PortState::Free => evtchnstat::CLOSED,
                PortState::Unbound { remote } => {
                    st.set_unbound(remote);
                    evtchnstat::UNBOUND
                }
                PortState::Interdomain { remote, remote_port } => {
                    st.set_interdomain(remote, remote_port);
                    evtchnstat::INTERDOMAIN
                }
                PortState::Virq(v) => {
                    st.set_virq(v);
                    evtchnstat::VIRQ
                }
                PortState::Ipi => evtchnstat::IPI,
                PortState::Pirq(p) => {
                    st.set_pirq(p);
                    evtchnstat::PIRQ
                }
            };
            hv.guest().write_obj(arg, &st)?;
            Ok(0)
        }
        op::UNMASK => {
            let u: EvtchnUnmask = hv.guest().read_obj(arg)?;
            let d = hv.cur_dom();
            let ch = *d.evtchn.get(u.port)?;
            if d.bitmaps().unmask(hv.mem(), ch.notify_vcpu, u.port) {
                hv.kick_vcpu(VcpuRef { domid: me, vcpu: ch.notify_vcpu });
            }
            Ok(0)
        }
        op::BIND_VCPU => {
            let b: EvtchnBindVcpu = hv.guest().read_obj(arg)?;
            hv.cur_dom_mut().evtchn.bind_vcpu(b.port, b.vcpu)?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// Closes `port` of `domid`; the peer of an interdomain channel goes back to unbound.
pub fn close_port<P: Platform>(hv: &mut Hypervisor<P>, domid: DomId, port: Port) -> Result<(), Errno> {
    let d = hv.domains.get_mut(&domid).ok_or(Errno::ESRCH)?;
    let ch = d.evtchn.free(port)?;
    let bm = d.bitmaps();
    if let PortState::Virq(virq::TIMER) = ch.state {
        if let Some(v) = d.vcpu_mut(ch.notify_vcpu) {
            v.virq_timer_port = None;
        }
    }
    bm.clear_pending(hv.plat.mem(), port);
    if let PortState::Pirq(pirq) = ch.state {
        if let Some(p) = hv.pirqs.get_mut(&pirq) {
            p.port = None;
            p.in_service = false;
        }
        hv.queue_irq_op(IrqOp::Mask(pirq));
    }
    if let PortState::Interdomain { remote, remote_port } = ch.state {
        if let Some(rd) = hv.domains.get_mut(&remote) {
            let _ = rd.evtchn.set_state(remote_port, PortState::Unbound { remote: domid });
        }
    }
    Ok(())
}
