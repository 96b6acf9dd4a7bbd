//! Hypercall dispatch: from a number and five argument registers to the handler, for the
//! register-only fast path and the full-frame path alike.
//!
//! Handlers copy guest arguments in once (through [`GuestSpace`]), validate the copy, act on
//! it and copy results out; they return Xen's `-errno` on bad input and never trust a guest
//! pointer. Long operations return [`Hc::Continue`] with updated arguments; the exit path then
//! rewinds the guest's RIP over the `syscall` so the call resumes where it stopped, letting
//! other vCPUs run in between.

mod desc;
mod domctl;
mod evtchn;
pub(crate) mod grant;
mod hvm;
mod memory;
mod misc;
pub(crate) mod mm;
mod physdev;
mod sched;

use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::traps;
use crate::vcpu::GuestFrame;
use hypercall_abi::hypercall::nr;
use hypercall_abi::Errno;

/// A handler's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hc {
    /// Return this value in `%rax`.
    Ret(i64),
    /// Not finished: re-execute with these arguments after letting others run.
    Continue([u64; 5]),
    /// The handler rewrote the guest frame itself (`iret`).
    FrameDone,
}

impl From<Result<i64, Errno>> for Hc {
    fn from(r: Result<i64, Errno>) -> Hc {
        Hc::Ret(r.unwrap_or_else(|e| e.to_ret()))
    }
}

/// Calls the handler of hypercall `nr` with arguments `a`.
#[inline(always)]
pub fn dispatch<P: Platform>(
    hv: &mut Hypervisor<P>,
    nr: u64,
    a: [u64; 5],
    frame: Option<&mut GuestFrame>,
) -> Hc {
    dispatch_in_place::<P, false>(hv, nr, &a, frame)
}

/// [`dispatch`], reading the arguments where they are (the entry stub's saved registers, a
/// multicall entry): each handler loads the ones it takes, instead of all five being copied
/// first on every hypercall. Inlined so that the fast path keeps the result in registers.
/// `IN_MULTICALL`: an entry of a multicall, where `multicall` and `iret` are refused with
/// `-EINVAL` (XSA-213: `iret` would rewrite the frame of the whole batch), decided in the one
/// jump on `nr`.
#[inline(always)]
pub fn dispatch_in_place<P: Platform, const IN_MULTICALL: bool>(
    hv: &mut Hypervisor<P>,
    nr: u64,
    a: &[u64; 5],
    frame: Option<&mut GuestFrame>,
) -> Hc {
    match nr {
        nr::SET_TRAP_TABLE => misc::set_trap_table(hv, a[0]).into(),
        nr::MMU_UPDATE => mm::mmu_update(hv, *a),
        nr::SET_GDT => desc::set_gdt(hv, a[0], a[1]).into(),
        nr::UPDATE_DESCRIPTOR => desc::update_descriptor(hv, a[0], a[1]).into(),
        nr::MMUEXT_OP => mm::mmuext_op(hv, *a),
        nr::UPDATE_VA_MAPPING => mm::update_va_mapping(hv, a[0], a[1], a[2]).into(),
        nr::UPDATE_VA_MAPPING_OTHERDOMAIN => mm::update_va_mapping_otherdomain(hv, *a).into(),
        nr::MULTICALL if IN_MULTICALL => Hc::Ret(Errno::EINVAL.to_ret()),
        nr::MULTICALL => mm::multicall(hv, a[0], a[1]),
        nr::MEMORY_OP => memory::memory_op(hv, a[0], a[1]),
        nr::STACK_SWITCH => misc::stack_switch(hv, a[0], a[1]).into(),
        nr::SET_CALLBACKS => misc::set_callbacks(hv, a[0], a[1], a[2]).into(),
        nr::FPU_TASKSWITCH => misc::fpu_taskswitch(hv, a[0]).into(),
        nr::SET_TIMER_OP => sched::set_timer_op(hv, a[0]).into(),
        nr::XEN_VERSION => misc::xen_version(hv, a[0], a[1]).into(),
        nr::CONSOLE_IO => misc::console_io(hv, *a),
        nr::VM_ASSIST => misc::vm_assist(hv, a[0], a[1]).into(),
        // Xen's handlers take the register number as an `int`: only the low 32 bits count.
        nr::SET_DEBUGREG => crate::emulate::set_debugreg(hv, u64::from(a[0] as u32), a[1]).map(|()| 0).into(),
        nr::GET_DEBUGREG => crate::cpu_state::get_debugreg(&hv.cur_vcpu().arch, u64::from(a[0] as u32))
            .map(|v| v as i64)
            .into(),
        nr::IRET if IN_MULTICALL => Hc::Ret(Errno::EINVAL.to_ret()),
        nr::IRET => match frame {
            Some(f) => match traps::do_iret(hv, f) {
                Ok(()) => Hc::FrameDone,
                Err(why) => {
                    let id = hv.current().domid;
                    hv.crash_domain(id, format_args!("{why}"));
                    Hc::FrameDone
                }
            },
            None => Hc::Ret(Errno::ENOSYS.to_ret()),
        },
        nr::VCPU_OP => sched::vcpu_op(hv, a[0], a[1], a[2]).into(),
        nr::SET_SEGMENT_BASE => misc::set_segment_base(hv, a[0], a[1]).into(),
        nr::SCHED_OP => sched::sched_op(hv, a[0], a[1]).into(),
        nr::CALLBACK_OP => misc::callback_op(hv, a[0], a[1]).into(),
        nr::EVENT_CHANNEL_OP => evtchn::event_channel_op(hv, a[0], a[1]).into(),
        nr::DOMCTL => domctl::domctl(hv, a[0]).into(),
        nr::PHYSDEV_OP => physdev::physdev_op(hv, a[0], a[1]).into(),
        nr::HVM_OP => hvm::hvm_op(hv, a[0], a[1]).into(),
        nr::GRANT_TABLE_OP => grant::grant_table_op(hv, *a),
        #[cfg(feature = "test-aids")]
        nr::ARCH_DEBUG => misc::debug_op(hv, a[0], a[1]).into(),
        _ => Hc::Ret(Errno::ENOSYS.to_ret()),
    }
}
