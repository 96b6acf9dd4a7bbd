//! `hvm_op`: only `HVMOP_get_param` for the store and console parameters, which is how dom0
//! (acting as Xen's `init-dom0less`) learns the xenstore and console rings and ports of the
//! domains the hypervisor built at boot. dom0 only; anything else is `-ENOSYS`.

use crate::hv::Hypervisor;
use crate::platform::Platform;
use hypercall_abi::hvm::{op, param, XenHvmParam};
use hypercall_abi::xen::resolve_domid;
use hypercall_abi::Errno;

pub fn hvm_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    if cmd as u32 != op::GET_PARAM {
        return Err(Errno::ENOSYS);
    }
    if !hv.cur_dom().privileged {
        return Err(Errno::EPERM);
    }
    let mut p: XenHvmParam = hv.guest().read_obj(arg)?;
    let d = hv.domains.get(&resolve_domid(p.domid, hv.current().domid)).ok_or(Errno::ESRCH)?;
    p.value = match p.index {
        param::STORE_PFN => d.store_ring.map_or(0, |(m, _)| m.0),
        param::STORE_EVTCHN => d.store_ring.map_or(0, |(_, port)| u64::from(port)),
        param::CONSOLE_PFN => d.console_ring.map_or(0, |(m, _)| m.0),
        param::CONSOLE_EVTCHN => d.console_ring.map_or(0, |(_, port)| u64::from(port)),
        _ => return Err(Errno::EINVAL),
    };
    hv.guest().write_obj(arg, &p)?;
    Ok(0)
}
