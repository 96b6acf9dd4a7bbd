//! `event_channel_op(cmd, arg)`: decodes the command, copies the argument in, calls the
//! event-channel subsystem ([`crate::event`], one function per sub-op) and copies the result
//! out.

use crate::event::{self, PortState};
use crate::hv::Hypervisor;
use crate::platform::Platform;
use hypercall_abi::event_channel::{
    evtchnstat, op, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu,
    EvtchnBindVirq, EvtchnClose, EvtchnExpandArray, EvtchnInitControl, EvtchnSend, EvtchnSetPriority,
    EvtchnStatus, EvtchnUnmask,
};
use hypercall_abi::xen::resolve_domid;
use hypercall_abi::Errno;

/// The commands a running kernel issues all the time (send, status, unmask) are decoded
/// here; setting channels up and tearing them down, out of line, so that they do not make
/// the hot ones pay for their larger frame.
pub fn event_channel_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    match cmd as u32 {
        op::SEND => {
            let s: EvtchnSend = hv.guest().read_obj(arg)?;
            event::send(hv, s.port)?;
            Ok(0)
        }
        op::STATUS => {
            // One address space for the copy in and out (nothing between changes it).
            let me = hv.current().domid;
            let guest = hv.guest();
            let mut st: EvtchnStatus = guest.read_obj(arg)?;
            let (state, vcpu) = event::status(hv, resolve_domid(st.dom, me), st.port)?;
            st.vcpu = vcpu;
            st.u = [0; 8];
            st.status = evtchnstat::CLOSED;
            match state {
                PortState::Free => {}
                PortState::Unbound { remote } => st.set_unbound(remote),
                PortState::Interdomain { remote, remote_port } => st.set_interdomain(remote, remote_port),
                PortState::Virq(v) => st.set_virq(v),
                PortState::Ipi => st.status = evtchnstat::IPI,
                PortState::Pirq(p) => st.set_pirq(p),
            }
            guest.write_obj(arg, &st)?;
            Ok(0)
        }
        op::UNMASK => {
            let u: EvtchnUnmask = hv.guest().read_obj(arg)?;
            event::unmask(hv, u.port)?;
            Ok(0)
        }
        _ => event_channel_setup(hv, cmd, arg),
    }
}

/// The other commands of [`event_channel_op`].
#[inline(never)]
fn event_channel_setup<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    let me = hv.current().domid;
    match cmd as u32 {
        op::ALLOC_UNBOUND => {
            let mut a: EvtchnAllocUnbound = hv.guest().read_obj(arg)?;
            let dom = resolve_domid(a.dom, me);
            a.port = event::alloc_unbound(hv, dom, resolve_domid(a.remote_dom, me))?;
            if let Err(e) = hv.guest().write_obj(arg, &a) {
                let _ = event::close(hv, dom, a.port);
                return Err(e);
            }
            Ok(0)
        }
        op::BIND_INTERDOMAIN => {
            let mut b: EvtchnBindInterdomain = hv.guest().read_obj(arg)?;
            b.local_port = event::bind_interdomain(hv, resolve_domid(b.remote_dom, me), b.remote_port)?;
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::BIND_VIRQ => {
            let mut b: EvtchnBindVirq = hv.guest().read_obj(arg)?;
            b.port = event::bind_virq(hv, b.virq, b.vcpu)?;
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::BIND_PIRQ => {
            let mut b: EvtchnBindPirq = hv.guest().read_obj(arg)?;
            b.port = event::bind_pirq(hv, b.pirq)?;
            if let Err(e) = hv.guest().write_obj(arg, &b) {
                let _ = event::close(hv, me, b.port);
                return Err(e);
            }
            Ok(0)
        }
        op::BIND_IPI => {
            let mut b: EvtchnBindIpi = hv.guest().read_obj(arg)?;
            b.port = event::bind_ipi(hv, b.vcpu)?;
            hv.guest().write_obj(arg, &b)?;
            Ok(0)
        }
        op::CLOSE => {
            let c: EvtchnClose = hv.guest().read_obj(arg)?;
            event::close(hv, me, c.port)?;
            Ok(0)
        }
        op::BIND_VCPU => {
            let b: EvtchnBindVcpu = hv.guest().read_obj(arg)?;
            event::bind_vcpu(hv, b.port, b.vcpu)?;
            Ok(0)
        }
        op::INIT_CONTROL => {
            // Xen copies the control out only on success, which never comes here.
            let c: EvtchnInitControl = hv.guest().read_obj(arg)?;
            event::fifo_init_control(hv, c.vcpu, c.offset)?;
            Ok(0)
        }
        op::EXPAND_ARRAY => {
            let _: EvtchnExpandArray = hv.guest().read_obj(arg)?;
            event::fifo_expand_array()?;
            Ok(0)
        }
        op::SET_PRIORITY => {
            let p: EvtchnSetPriority = hv.guest().read_obj(arg)?;
            event::set_priority(hv, p.port)?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}
