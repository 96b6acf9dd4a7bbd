//! Scheduling hypercalls: `sched_op` (yield, block, shutdown, poll), `set_timer_op` and the
//! timer parts of `vcpu_op`.

use crate::domain::ShutdownReason;
use crate::event;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::vcpu;
use crate::vcpu::RunState;
use hypercall_abi::sched::{op, SchedRemoteShutdown, SchedShutdown};
use hypercall_abi::vcpu::{
    op as vcpuop, VcpuGetPhysid, VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetPeriodicTimer,
    VcpuSetSingleshotTimer,
};
use hypercall_abi::xen::virq;
use hypercall_abi::xen::VcpuGuestContext;
use hypercall_abi::Errno;

pub fn sched_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    match cmd as u32 {
        op::YIELD => {
            hv.sched.yield_current();
            hv.resched();
            Ok(0)
        }
        op::BLOCK => {
            let r = hv.current();
            let vi = hv.cur_vcpu().info();
            // Re-enable event delivery, then block only if nothing is pending (Xen's
            // vcpu_block_enable_events), so a wake-up between the two cannot be lost.
            vi.set_upcall_mask(hv.mem(), false);
            if !vi.upcall_state(hv.mem()).0 {
                hv.cur_vcpu_mut().state = RunState::Blocked;
                hv.sleep_vcpu(r);
            }
            Ok(0)
        }
        op::SHUTDOWN => {
            let s: SchedShutdown = hv.guest().read_obj(arg)?;
            let reason = ShutdownReason::from_code(s.reason).ok_or(Errno::EINVAL)?;
            let id = hv.current().domid;
            hv.shutdown_domain(id, reason);
            Ok(0)
        }
        op::SHUTDOWN_CODE => {
            let s: SchedShutdown = hv.guest().read_obj(arg)?;
            ShutdownReason::from_code(s.reason).ok_or(Errno::EINVAL)?;
            Ok(0)
        }
        op::REMOTE_SHUTDOWN => {
            if !hv.cur_dom().privileged {
                return Err(Errno::EPERM);
            }
            let s: SchedRemoteShutdown = hv.guest().read_obj(arg)?;
            let reason = ShutdownReason::from_code(s.reason).ok_or(Errno::EINVAL)?;
            if !hv.domains.contains_key(&s.domain_id) {
                return Err(Errno::ESRCH);
            }
            hv.shutdown_domain(s.domain_id, reason);
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// Arms (or with 0 cancels) the running vCPU's one-shot timer at absolute system time
/// `deadline_ns`; a deadline already past fires at once.
pub fn set_timer_op<P: Platform>(hv: &mut Hypervisor<P>, deadline_ns: u64) -> Result<i64, Errno> {
    arm_timer(hv, (deadline_ns != 0).then_some(deadline_ns));
    Ok(0)
}

fn arm_timer<P: Platform>(hv: &mut Hypervisor<P>, deadline: Option<u64>) {
    let r = hv.current();
    let now = hv.now_ns();
    match deadline {
        Some(t) if t <= now => {
            hv.set_vcpu_timer(r, None);
            event::send_vcpu_virq(hv, r, virq::TIMER);
        }
        d => hv.set_vcpu_timer(r, d),
    }
}

/// `vcpu_op(cmd, vcpuid, arg)`, as Xen 4.17's `do_vcpu_op`: the vCPU must exist (`-ENOENT`),
/// then each command checks and copies its argument and calls the vCPU subsystem.
pub fn vcpu_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, vcpuid: u64, arg: u64) -> Result<i64, Errno> {
    // Xen takes the vCPU id as an `unsigned int`.
    let vcpuid = vcpuid as u32;
    let Some(v) = hv.cur_dom().vcpu(vcpuid) else {
        return Err(Errno::ENOENT);
    };
    let up = v.state != RunState::Offline;
    let own = vcpuid == hv.current().vcpu;
    match cmd as u32 {
        vcpuop::INITIALISE => {
            // The context is copied in whole first (-EFAULT), as Xen's arch_initialise_vcpu;
            // every vCPU here was initialised by the domain builder.
            let mut chunk = [0u8; 256];
            let size = core::mem::size_of::<VcpuGuestContext>() as u64;
            let mut off = 0;
            while off < size {
                let n = (size - off).min(chunk.len() as u64);
                hv.guest().read(arg.checked_add(off).ok_or(Errno::EFAULT)?, &mut chunk[..n as usize])?;
                off += n;
            }
            Err(Errno::EEXIST)
        }
        // Initialised and not down: nothing to bring up.
        vcpuop::UP => Ok(0),
        vcpuop::DOWN => {
            vcpu::down(hv, vcpuid);
            Ok(0)
        }
        vcpuop::IS_UP => Ok(i64::from(up)),
        vcpuop::GET_RUNSTATE_INFO => {
            let info = vcpu::runstate_now(hv, vcpuid)?;
            hv.guest().write_obj(arg, &info)?;
            Ok(0)
        }
        vcpuop::SET_PERIODIC_TIMER => {
            let t: VcpuSetPeriodicTimer = hv.guest().read_obj(arg)?;
            if t.period_ns == 0 {
                return Err(Errno::EINVAL);
            }
            vcpu::set_periodic_timer(hv, vcpuid, t.period_ns)?;
            Ok(0)
        }
        vcpuop::STOP_PERIODIC_TIMER => {
            vcpu::set_periodic_timer(hv, vcpuid, 0)?;
            Ok(0)
        }
        // Timers of other vCPUs can only be set by themselves (as in Xen).
        vcpuop::SET_SINGLESHOT_TIMER | vcpuop::STOP_SINGLESHOT_TIMER if !own => Err(Errno::EINVAL),
        vcpuop::SET_SINGLESHOT_TIMER => {
            // A deadline already past fires now, whatever the flags: Xen 4.17.7 (its stable
            // branch took the change) ignores VCPU_SSHOTTMR_future and never answers -ETIME.
            let t: VcpuSetSingleshotTimer = hv.guest().read_obj(arg)?;
            arm_timer(hv, Some(t.timeout_abs_ns));
            Ok(0)
        }
        vcpuop::STOP_SINGLESHOT_TIMER => {
            let r = hv.current();
            hv.set_vcpu_timer(r, None);
            Ok(0)
        }
        vcpuop::REGISTER_VCPU_INFO => {
            let i: VcpuRegisterVcpuInfo = hv.guest().read_obj(arg)?;
            vcpu::register_vcpu_info(hv, vcpuid, i.mfn, i.offset)?;
            Ok(0)
        }
        vcpuop::REGISTER_RUNSTATE_MEMORY_AREA => {
            let a: VcpuRegisterRunstateMemoryArea = hv.guest().read_obj(arg)?;
            vcpu::register_runstate_area(hv, vcpuid, a.addr)?;
            Ok(0)
        }
        vcpuop::REGISTER_VCPU_TIME_MEMORY_AREA => {
            let a: VcpuRegisterRunstateMemoryArea = hv.guest().read_obj(arg)?;
            vcpu::register_time_area(hv, vcpuid, a.addr)?;
            Ok(0)
        }
        vcpuop::GET_PHYSID => {
            // The hardware domain learns the physical CPU (one CPU: APIC and ACPI id 0).
            if !hv.cur_dom().privileged {
                return Err(Errno::EINVAL);
            }
            hv.guest().write_obj(arg, &VcpuGetPhysid { phys_id: 0 })?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}
