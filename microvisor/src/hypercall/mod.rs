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

pub use evtchn::{close_port, EvtchnOps};

use crate::guest_mem::GuestSpace;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::traps;
use crate::vcpu::GuestFrame;
use hypercall_abi::hypercall::nr;
use hypercall_abi::microvisor::trace::Record;
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

impl<P: Platform> Hypervisor<P> {
    /// The running vCPU's address space, for copying arguments.
    pub fn guest(&self) -> GuestSpace<'_, P::Mem> {
        GuestSpace::new(self.mem(), self.cur_vcpu().current_l4())
    }

    /// A hypercall from guest kernel mode with nothing but registers (`%rax` and the five
    /// argument registers) — every hypercall but the one the arch layer's fast path answers
    /// (`xen_version(XENVER_version)`, see `arch/x86_64/entry.rs`). Returns the value for
    /// `%rax` and whether the exit path must run (a reschedule, an event to deliver, a
    /// continuation, hardware state to change).
    #[inline(never)]
    pub fn hypercall_general(&mut self, nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> (u64, bool) {
        let args = [a1, a2, a3, a4, a5];
        self.trace_hypercall(nr, a1);
        let hc = dispatch(self, nr, args, None);
        self.trace_hypercall_done(nr, &hc);
        self.after_hypercall(nr);
        match hc {
            Hc::Ret(r) => (r as u64, self.exit_work || self.upcall_deliverable()),
            Hc::Continue(a) => {
                self.pending_edit.continuation = Some(a);
                // `%rax` must still hold the number when the `syscall` re-executes.
                (nr, true)
            }
            Hc::FrameDone => (Errno::ENOSYS.to_ret() as u64, true),
        }
    }

    #[inline]
    fn trace_hypercall(&mut self, nr: u64, a1: u64) {
        if self.trace.is_on() {
            let (tsc, r) = (self.plat.tsc(), self.current());
            self.trace.record(&Record::Hypercall { tsc, vcpu: (r.domid.0, r.vcpu), nr, a1 });
        }
    }

    #[inline]
    fn trace_hypercall_done(&mut self, nr: u64, hc: &Hc) {
        if self.trace.is_on() {
            let ret = match *hc {
                Hc::Ret(r) => r,
                Hc::Continue(_) | Hc::FrameDone => nr as i64,
            };
            let (tsc, r) = (self.plat.tsc(), self.current());
            self.trace.record(&Record::HypercallDone { tsc, vcpu: (r.domid.0, r.vcpu), nr, ret });
        }
    }

    /// Flushes the frame table owes (a frame changed type or owner) must happen before the
    /// guest runs again; then the frame-table audit, when `audit=<N>` asked for it.
    #[inline]
    fn after_hypercall(&mut self, nr: u64) {
        if self.frames.flush_pending() {
            self.frames.take_flush_pending();
            self.request_flush(crate::mm::tlb::Flush::All);
        }
        self.audit_after_hypercall(nr);
    }

    /// Full-frame path: a `syscall` whose registers are all in `frame` — from guest user mode
    /// (bounced to the guest kernel), or a hypercall that needs the frame (`iret`).
    pub fn syscall_with_frame(&mut self, frame: &mut GuestFrame) {
        if !self.cur_vcpu().kernel_mode {
            if let Err(e) = traps::user_syscall(self, frame) {
                let id = self.current().domid;
                self.crash_domain(id, format_args!("{e}"));
            }
            return;
        }
        let nr = frame.rax;
        self.trace_hypercall(nr, frame.rdi);
        let hc = dispatch(self, nr, frame.hypercall_args(), Some(frame));
        self.trace_hypercall_done(nr, &hc);
        self.after_hypercall(nr);
        match hc {
            Hc::Ret(r) => frame.rax = r as u64,
            Hc::Continue(a) => {
                frame.set_hypercall_args(a);
                frame.rip = frame.rip.wrapping_sub(2);
            }
            Hc::FrameDone => {}
        }
    }
}

/// Calls the handler of hypercall `nr`. Inlined so that the fast path keeps the result in
/// registers.
#[inline(always)]
pub fn dispatch<P: Platform>(
    hv: &mut Hypervisor<P>,
    nr: u64,
    a: [u64; 5],
    frame: Option<&mut GuestFrame>,
) -> Hc {
    match nr {
        nr::SET_TRAP_TABLE => misc::set_trap_table(hv, a[0]).into(),
        nr::MMU_UPDATE => mm::mmu_update(hv, a),
        nr::SET_GDT => desc::set_gdt(hv, a[0], a[1]).into(),
        nr::UPDATE_DESCRIPTOR => desc::update_descriptor(hv, a[0], a[1]).into(),
        nr::MMUEXT_OP => mm::mmuext_op(hv, a),
        nr::UPDATE_VA_MAPPING => mm::update_va_mapping(hv, a[0], a[1], a[2]).into(),
        nr::UPDATE_VA_MAPPING_OTHERDOMAIN => mm::update_va_mapping_otherdomain(hv, a).into(),
        nr::MULTICALL => mm::multicall(hv, a[0], a[1]),
        nr::MEMORY_OP => memory::memory_op(hv, a[0], a[1]),
        nr::STACK_SWITCH => misc::stack_switch(hv, a[0], a[1]).into(),
        nr::SET_CALLBACKS => misc::set_callbacks(hv, a[0], a[1], a[2]).into(),
        nr::FPU_TASKSWITCH => misc::fpu_taskswitch(hv, a[0]).into(),
        nr::SET_TIMER_OP => sched::set_timer_op(hv, a[0]).into(),
        nr::XEN_VERSION => misc::xen_version(hv, a[0], a[1]).into(),
        nr::CONSOLE_IO => misc::console_io(hv, a),
        nr::VM_ASSIST => misc::vm_assist(hv, a[0], a[1]).into(),
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
        nr::GRANT_TABLE_OP => grant::grant_table_op(hv, a),
        nr::ARCH_DEBUG => misc::debug_op(hv, a[0], a[1]).into(),
        _ => Hc::Ret(Errno::ENOSYS.to_ret()),
    }
}
