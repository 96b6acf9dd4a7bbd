//! Scheduling hypercalls: `sched_op` (yield, block, shutdown, poll), `set_timer_op` and the
//! timer parts of `vcpu_op`.

use crate::domain::ShutdownReason;
use crate::event;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::vcpu::RunState;
use hypercall_abi::sched::{op, SchedRemoteShutdown, SchedShutdown};
use hypercall_abi::vcpu::{op as vcpuop, sshottmr, VcpuSetSingleshotTimer};
use hypercall_abi::xen::virq;
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
            let bm = hv.cur_dom().bitmaps();
            // Re-enable event delivery, then block only if nothing is pending (Xen's
            // vcpu_block_enable_events), so a wake-up between the two cannot be lost.
            bm.set_upcall_mask(hv.mem(), r.vcpu, false);
            if !bm.upcall_state(hv.mem(), r.vcpu).0 {
                hv.cur_vcpu_mut().state = RunState::Blocked;
                hv.sched.sleep(r);
                hv.resched();
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

pub fn vcpu_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, vcpuid: u64, arg: u64) -> Result<i64, Errno> {
    let vcpuid = vcpuid as u32;
    if hv.cur_dom().vcpu(vcpuid).is_none() {
        return Err(Errno::ENOENT);
    }
    let own = vcpuid == hv.current().vcpu;
    match cmd as u32 {
        vcpuop::IS_UP => {
            Ok(i64::from(hv.cur_dom().vcpu(vcpuid).is_some_and(|v| v.state != RunState::Offline)))
        }
        vcpuop::SET_SINGLESHOT_TIMER if own => {
            let t: VcpuSetSingleshotTimer = hv.guest().read_obj(arg)?;
            if t.flags & sshottmr::FUTURE != 0 && t.timeout_abs_ns < hv.now_ns() {
                return Err(Errno::ETIME);
            }
            arm_timer(hv, Some(t.timeout_abs_ns));
            Ok(0)
        }
        vcpuop::STOP_SINGLESHOT_TIMER if own => {
            let r = hv.current();
            hv.set_vcpu_timer(r, None);
            Ok(0)
        }
        // Timers of other vCPUs can only be set by themselves (as in Xen).
        vcpuop::SET_SINGLESHOT_TIMER | vcpuop::STOP_SINGLESHOT_TIMER => Err(Errno::EINVAL),
        vcpuop::STOP_PERIODIC_TIMER => Ok(0),
        _ => Err(Errno::ENOSYS),
    }
}
