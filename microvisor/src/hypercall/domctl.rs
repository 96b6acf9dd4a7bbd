//! `domctl`: the toolstack's view and control of domains, for dom0 only. Privilege is checked
//! once at the door; every command then acts on a copied-in `xen_domctl`.

use crate::domain::DomainState;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::vcpu::RunState;
use hypercall_abi::domctl::{cmd, dominf, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::vcpu::runstate;
use hypercall_abi::{DomId, Errno};

pub fn domctl<P: Platform>(hv: &mut Hypervisor<P>, arg: u64) -> Result<i64, Errno> {
    if !hv.cur_dom().privileged {
        return Err(Errno::EPERM);
    }
    let mut op: XenDomctl = hv.guest().read_obj(arg)?;
    if !op.version_ok() {
        return Err(Errno::EACCES);
    }
    match op.cmd {
        cmd::GETDOMAININFO => {
            // Xen returns the first domain whose id is at least the one asked for, so the
            // toolstack can enumerate by asking for last + 1.
            let d = hv.domains.first_from(op.domain).ok_or(Errno::ESRCH)?;
            let info = getdomaininfo(hv, d.id);
            op.domain = d.id;
            op.set_payload(&info);
            hv.guest().write_obj(arg, &op)?;
            Ok(0)
        }
        cmd::DESTROYDOMAIN => {
            let id = op.domain;
            if id == hv.current().domid || id == DomId::DOM0 {
                return Err(Errno::EINVAL);
            }
            if !hv.domains.contains_key(&id) {
                return Err(Errno::ESRCH);
            }
            let released = crate::domain_lifecycle::destroy_domain(hv, id);
            let left = hv.frames.tot_pages(id);
            hv.log(format_args!("Domain {} destroyed: released={released} referenced={left}", id.0));
            Ok(0)
        }
        cmd::PAUSEDOMAIN | cmd::UNPAUSEDOMAIN => {
            let id = op.domain;
            if id == hv.current().domid {
                return Err(Errno::EINVAL);
            }
            let d = hv.domains.get_mut(&id).ok_or(Errno::ESRCH)?;
            match (op.cmd, d.state) {
                (cmd::PAUSEDOMAIN, DomainState::Running) => {
                    d.state = DomainState::Paused;
                    hv.sched.remove_domain(id);
                }
                (cmd::UNPAUSEDOMAIN, DomainState::Paused) => {
                    d.state = DomainState::Running;
                    hv.start_domain(id);
                }
                _ => {}
            }
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `xen_domctl_getdomaininfo` of domain `id`.
pub fn getdomaininfo<P: Platform>(hv: &Hypervisor<P>, id: DomId) -> XenDomctlGetdomaininfo {
    let d = &hv.domains[&id];
    let mut flags = 0;
    match d.state {
        DomainState::Running => {}
        DomainState::Paused => flags |= dominf::PAUSED,
        DomainState::Shutdown(r) => flags = dominf::with_shutdown_code(flags | dominf::SHUTDOWN, r.code()),
        DomainState::Dying => flags |= dominf::DYING,
    }
    if d.vcpus.iter().any(|v| v.state == RunState::Runnable) && d.is_alive() {
        flags |= dominf::RUNNING;
    } else if d.vcpus.iter().any(|v| v.state == RunState::Blocked) {
        flags |= dominf::BLOCKED;
    }
    let mut info = <XenDomctlGetdomaininfo as zerocopy::FromZeros>::new_zeroed();
    info.domain = id;
    info.flags = flags;
    info.tot_pages = hv.frames.tot_pages(id);
    info.max_pages = d.max_pages;
    info.shared_info_frame = d.shared_info.0;
    let now = hv.now_ns();
    info.cpu_time = d.vcpus.iter().map(|v| v.runstate.info_at(now).time[runstate::RUNNING as usize]).sum();
    info.nr_online_vcpus = d.vcpus.iter().filter(|v| v.state != RunState::Offline).count() as u32;
    info.max_vcpu_id = d.vcpus.len().saturating_sub(1) as u32;
    // Xen leaves the 16-byte handle to the toolstack; for domains the hypervisor built at
    // boot there is no toolstack, so the handle carries the configured name (NUL-padded), which
    // dom0 uses to name them.
    let n = d.name.len().min(info.handle.len());
    info.handle[..n].copy_from_slice(&d.name.as_bytes()[..n]);
    info
}
