//! `physdev_op`: what a driver domain needs from the hypervisor for real devices — mapping
//! GSIs to pirqs, acknowledging them, querying them — for dom0 only; every other domain gets
//! `-EPERM` — except `set_iopl`, the virtual IOPL any vCPU may set (`cpu_state`). dom0 reaches
//! its I/O ports through the CPU's I/O bitmap without it.

use crate::hv::Hypervisor;
use crate::irq::{gsi_available, IrqOp, Pirq};
use crate::platform::Platform;
use hypercall_abi::physdev::{
    map_pirq_type, op, xenirqstat, PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq, PhysdevSetIopl,
    PhysdevUnmapPirq,
};
use hypercall_abi::xen::resolve_domid;
use hypercall_abi::Errno;

pub fn physdev_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    let me = hv.current().domid;
    let privileged = hv.cur_dom().privileged;
    match cmd as u32 {
        // The virtual IOPL, which decides `cli`, `sti` and trapped port I/O (Xen's rule).
        op::SET_IOPL => {
            let s: PhysdevSetIopl = hv.guest().read_obj(arg)?;
            let iopl = u8::try_from(s.iopl).ok().filter(|&i| i <= 3).ok_or(Errno::EINVAL)?;
            hv.cur_vcpu_mut().arch.iopl = iopl;
            Ok(0)
        }
        op::IRQ_STATUS_QUERY => {
            let mut q: PhysdevIrqStatusQuery = hv.guest().read_obj(arg)?;
            q.flags =
                if hv.pirqs.get(&q.irq).is_some_and(|p| p.owner == me) { xenirqstat::NEEDS_EOI } else { 0 };
            hv.guest().write_obj(arg, &q)?;
            Ok(0)
        }
        _ if !privileged => Err(Errno::EPERM),
        op::MAP_PIRQ => {
            let mut m: PhysdevMapPirq = hv.guest().read_obj(arg)?;
            if resolve_domid(m.domid, me) != me {
                // Passing devices through to other domains is not supported.
                return Err(Errno::EPERM);
            }
            if m.type_ != map_pirq_type::GSI {
                return Err(Errno::ENOSYS);
            }
            let gsi = u32::try_from(m.index).map_err(|_| Errno::EINVAL)?;
            if !gsi_available(gsi) {
                return Err(Errno::EINVAL);
            }
            match hv.pirqs.get(&gsi) {
                Some(p) if p.owner != me => return Err(Errno::EBUSY),
                Some(_) => {}
                None => {
                    hv.pirqs.insert(gsi, Pirq { owner: me, port: None, in_service: false });
                }
            }
            m.pirq = gsi as i32;
            hv.guest().write_obj(arg, &m)?;
            Ok(0)
        }
        op::UNMAP_PIRQ => {
            let u: PhysdevUnmapPirq = hv.guest().read_obj(arg)?;
            let pirq = u32::try_from(u.pirq).map_err(|_| Errno::EINVAL)?;
            match hv.pirqs.get(&pirq) {
                Some(p) if p.owner == me && p.port.is_none() => {
                    hv.pirqs.remove(&pirq);
                    Ok(0)
                }
                Some(p) if p.owner == me => Err(Errno::EBUSY),
                _ => Err(Errno::EINVAL),
            }
        }
        op::EOI => {
            let e: PhysdevEoi = hv.guest().read_obj(arg)?;
            match hv.pirqs.get_mut(&e.irq) {
                Some(p) if p.owner == me => {
                    if core::mem::take(&mut p.in_service) && p.port.is_some() {
                        hv.queue_irq_op(IrqOp::Unmask(e.irq));
                    }
                    Ok(0)
                }
                _ => Err(Errno::EINVAL),
            }
        }
        // dom0 reporting the devices it found: nothing for the hypervisor to track.
        op::PCI_DEVICE_ADD | op::MANAGE_PCI_ADD | op::MANAGE_PCI_ADD_EXT => Ok(0),
        _ => Err(Errno::ENOSYS),
    }
}
