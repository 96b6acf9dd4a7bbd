//! Virtual CPUs: the register frame the entry paths save, and everything else the hypervisor
//! keeps per vCPU for a PV guest (mode, trap table, callbacks, kernel stack, segment bases,
//! page-table bases, timer).

use hypercall_abi::vcpu::runstate;
use hypercall_abi::xen::{TrapInfo, FLAT_KERNEL_CS, FLAT_KERNEL_SS};
use hypercall_abi::Mfn;

/// `GuestFrame::vector` of a frame saved by the `syscall` entry (not a hardware vector).
pub const VECTOR_SYSCALL: u64 = 0x100;

/// A guest's general registers as the entry paths save them.
///
/// The layout is fixed because assembly builds it: the CPU (or the `syscall` entry) pushes the
/// five-word interrupt frame at the end, the entry stub pushes `error_code` (a dummy 0 for
/// vectors without one) and `vector`, then the fifteen general registers. The last five fields
/// are therefore exactly what `iretq` pops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// Exception vector, or [`VECTOR_SYSCALL`].
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = {
    assert!(core::mem::size_of::<GuestFrame>() == 22 * 8);
    assert!(core::mem::offset_of!(GuestFrame, vector) == 15 * 8);
    assert!(core::mem::offset_of!(GuestFrame, rip) == 17 * 8);
    assert!(core::mem::offset_of!(GuestFrame, cs) == 18 * 8);
};

pub use crate::x86::rflags;

impl GuestFrame {
    /// The general registers as `[rax, rbx, rcx, rdx, rsp, rbp, rsi, rdi, r8..r15]`, the
    /// order of x86 register numbers in ModRM encodings.
    pub fn gpr(&self, n: u8) -> u64 {
        match n & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => self.rsp,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }

    /// Sets register number `n` (x86 encoding order).
    pub fn set_gpr(&mut self, n: u8, v: u64) {
        let r = match n & 15 {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            4 => &mut self.rsp,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            _ => &mut self.r15,
        };
        *r = v;
    }

    /// Hypercall arguments 1-5 (`rdi, rsi, rdx, r10, r8`).
    pub fn hypercall_args(&self) -> [u64; 5] {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8]
    }

    /// Replaces hypercall arguments 1-5 (a continuation records its progress there).
    pub fn set_hypercall_args(&mut self, a: [u64; 5]) {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8] = a;
    }
}

/// What a vCPU is doing, from the scheduler's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// May run.
    Runnable,
    /// Waiting for an event (`SCHEDOP_block` / `SCHEDOP_poll`).
    Blocked,
    /// Not brought up, or its domain has shut down.
    Offline,
}

impl RunState {
    /// The `RUNSTATE_*` a vCPU off the CPU in this state is in.
    pub fn runstate(self) -> i32 {
        match self {
            RunState::Runnable => runstate::RUNNABLE,
            RunState::Blocked => runstate::BLOCKED,
            RunState::Offline => runstate::OFFLINE,
        }
    }
}

/// Where a vCPU's time went (Xen's `vcpu_runstate_info`): its current `RUNSTATE_*`, since
/// when, and the total time spent in each state. Changed when the vCPU gets or leaves the CPU
/// and when it is woken or taken offline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runstate {
    /// A `RUNSTATE_*` value.
    pub state: i32,
    /// System time (ns) at which `state` was entered.
    pub entry_ns: u64,
    /// Nanoseconds spent in each state, indexed by `RUNSTATE_*`.
    pub time: [u64; 4],
}

impl Runstate {
    /// A vCPU that has never run: offline since `now`.
    pub fn offline(now: u64) -> Runstate {
        Runstate { state: runstate::OFFLINE, entry_ns: now, time: [0; 4] }
    }

    /// Moves to `state` at `now`, charging the time since the last change to the old state.
    pub fn set(&mut self, state: i32, now: u64) {
        let spent = now.saturating_sub(self.entry_ns);
        // `state` is always a RUNSTATE_* value (0..=3).
        let t = &mut self.time[self.state as usize & 3];
        *t = t.wrapping_add(spent);
        self.state = state;
        self.entry_ns = self.entry_ns.max(now);
    }

    /// The vCPU got the CPU at `now`.
    pub fn enter_cpu(&mut self, now: u64) {
        self.set(runstate::RUNNING, now);
    }

    /// The vCPU left the CPU at `now`, in scheduling state `s`.
    pub fn leave_cpu(&mut self, s: RunState, now: u64) {
        self.set(s.runstate(), now);
    }

    /// The info as of `now` (the current state's time so far included).
    pub fn info_at(&self, now: u64) -> Runstate {
        let mut r = *self;
        r.set(self.state, now);
        r.entry_ns = self.entry_ns;
        r
    }
}

/// Callbacks a PV kernel registers (`set_callbacks`, `callback_op`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Callbacks {
    pub event: u64,
    pub failsafe: u64,
    pub syscall: u64,
    pub syscall32: u64,
    pub sysenter: u64,
    pub nmi: u64,
    /// `CALLBACKF_mask_events` on the syscall callback.
    pub syscall_masks_events: bool,
    /// `CALLBACKF_mask_events` on the failsafe callback.
    pub failsafe_masks_events: bool,
}

/// A vCPU's x87/SSE state in FXSAVE format (saved and restored by the arch layer on vCPU
/// switches; the hypervisor itself never touches these registers).
#[derive(Clone)]
#[repr(C, align(16))]
pub struct FpuArea(pub [u8; 512]);

impl FpuArea {
    /// The state after `fninit` with MXCSR at its reset value (all SIMD exceptions masked).
    pub fn initial() -> FpuArea {
        let mut a = FpuArea([0; 512]);
        use crate::x86::fxsave::*;
        a.0[FCW..FCW + 2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
        a.0[MXCSR..MXCSR + 4].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
        a.0[MXCSR_MASK..MXCSR_MASK + 4].copy_from_slice(&MXCSR_MASK_DEFAULT.to_le_bytes());
        a
    }
}

/// Xen's default periodic timer for PV vCPUs: 100 Hz (guests that do their own timekeeping,
/// as Linux does, stop it with `VCPUOP_stop_periodic_timer`).
pub const DEFAULT_PERIODIC_NS: u64 = 10_000_000;

/// The frames of a guest GDT (at most 16, so no heap).
pub type GdtFrames = heapless::Vec<Mfn, { hypercall_abi::xen::MAX_GUEST_GDT_FRAMES }>;

/// One vCPU of a PV domain.
pub struct Vcpu {
    pub id: u32,
    /// Registers while not running (the live copy is the entry frame while it runs).
    pub frame: GuestFrame,
    pub state: RunState,
    /// Guest kernel mode (true) or guest user mode; both run in ring 3 (`TF_kernel_mode`).
    pub kernel_mode: bool,
    /// The virtual IDT from `set_trap_table`.
    pub traps: [TrapInfo; 256],
    pub callbacks: Callbacks,
    /// `stack_switch`: where bounce frames go when an event or trap arrives in user mode.
    pub kernel_ss: u16,
    pub kernel_sp: u64,
    /// Kernel page-table base (`ctrlreg[3]`).
    pub kernel_l4: Mfn,
    /// User page-table base (`ctrlreg[1]`); `None` until `MMUEXT_NEW_USER_BASEPTR`.
    pub user_l4: Option<Mfn>,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
    /// The guest's `%ds`, `%es`, `%fs` and `%gs` selectors as the CPU held them when the vCPU
    /// last left it (Xen's `save_segments`); loaded again when it returns, so no domain sees
    /// another's selectors or their hidden descriptors (bases and limits in 32-bit code).
    pub data_sels: [u16; 4],
    /// Absolute system time (ns) of the `set_timer_op` / singleshot timer, if armed. Changed
    /// only through `Hypervisor::set_vcpu_timer`, which keeps the earliest deadline cached.
    timer_deadline: Option<u64>,
    /// Port bound to VIRQ_TIMER on this vCPU, if any.
    pub virq_timer_port: Option<u32>,
    /// `fpu_taskswitch(1)`: the guest's virtual CR0.TS.
    pub fpu_ts: bool,
    /// Where its time went.
    pub runstate: Runstate,
    /// Guest address where the hypervisor keeps a copy of `runstate` current
    /// (`VCPUOP_register_runstate_memory_area`), written through the kernel page tables.
    pub runstate_area: Option<u64>,
    /// Guest address of a second copy of the PV clock (`VCPUOP_register_vcpu_time_memory_area`).
    pub time_area: Option<u64>,
    /// Machine address of its `vcpu_info`: in the shared_info page, or where
    /// `VCPUOP_register_vcpu_info` moved it (8-byte aligned).
    pub vcpu_info: u64,
    /// The guest frame holding the registered `vcpu_info` (a general and a writable type
    /// reference are held on it), if it moved out of shared_info.
    pub vcpu_info_frame: Option<Mfn>,
    /// Period of the periodic timer in ns (0: stopped). PV vCPUs start with Xen's 100 Hz.
    pub periodic_period_ns: u64,
    /// System time of the periodic timer's last tick (or of its setting).
    pub periodic_last_ns: u64,
    /// x87/SSE registers while not running.
    pub fpu: FpuArea,
    /// `set_gdt` frames (each holding a general and a segment-descriptor type reference).
    pub gdt_frames: GdtFrames,
    /// The validated descriptors of those frames, which the arch layer loads (its heap is
    /// charged to the domain's quota).
    pub gdt: alloc::vec::Vec<u64>,
    /// Bumped whenever `gdt` or `ldt` changes, so the arch layer knows to reload them.
    pub gdt_generation: u64,
    /// Virtual IOPL, CR4 and debug registers.
    pub arch: crate::cpu_state::VcpuArch,
    /// `MMUEXT_SET_LDT` frames (each holding a general and a segment-descriptor type
    /// reference), and the validated descriptors the arch layer loads as the LDT.
    pub ldt_frames: GdtFrames,
    pub ldt: alloc::vec::Vec<u64>,
}

impl Vcpu {
    /// A fresh offline vCPU whose `vcpu_info` is at machine address `vcpu_info`.
    pub fn new(id: u32, vcpu_info: u64) -> Vcpu {
        Vcpu {
            id,
            frame: GuestFrame::default(),
            state: RunState::Offline,
            kernel_mode: true,
            traps: [TrapInfo::default(); 256],
            callbacks: Callbacks::default(),
            kernel_ss: FLAT_KERNEL_SS,
            kernel_sp: 0,
            kernel_l4: Mfn(0),
            user_l4: None,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            data_sels: [0; 4],
            timer_deadline: None,
            virq_timer_port: None,
            fpu_ts: false,
            runstate: Runstate::offline(0),
            runstate_area: None,
            time_area: None,
            vcpu_info,
            vcpu_info_frame: None,
            periodic_period_ns: DEFAULT_PERIODIC_NS,
            periodic_last_ns: 0,
            fpu: FpuArea::initial(),
            gdt_frames: GdtFrames::new(),
            gdt: alloc::vec::Vec::new(),
            gdt_generation: 0,
            arch: crate::cpu_state::VcpuArch::default(),
            ldt_frames: GdtFrames::new(),
            ldt: alloc::vec::Vec::new(),
        }
    }

    /// Its `vcpu_info`.
    #[inline]
    pub fn info(&self) -> crate::event::VcpuInfoRef {
        crate::event::VcpuInfoRef { ma: self.vcpu_info }
    }

    /// When the periodic timer next ticks, if it runs.
    pub fn periodic_deadline(&self) -> Option<u64> {
        (self.periodic_period_ns != 0).then(|| self.periodic_last_ns.saturating_add(self.periodic_period_ns))
    }

    /// Absolute system time (ns) of its one-shot timer, if armed.
    pub fn timer_deadline(&self) -> Option<u64> {
        self.timer_deadline
    }

    /// Arms or stops the timer (see the field).
    pub(crate) fn set_timer_deadline(&mut self, t: Option<u64>) {
        self.timer_deadline = t;
    }

    /// The page-table base the vCPU runs on now.
    pub fn current_l4(&self) -> Mfn {
        if self.kernel_mode {
            self.kernel_l4
        } else {
            self.user_l4.unwrap_or(self.kernel_l4)
        }
    }

    /// The page-table bases this vCPU holds references on, one item per reference held (a
    /// general and an L4 type reference each): the kernel base once set, and the user base,
    /// which may be the same frame with a reference of its own.
    pub fn held_bases(&self) -> impl Iterator<Item = Mfn> {
        (self.kernel_l4 != Mfn(0)).then_some(self.kernel_l4).into_iter().chain(self.user_l4)
    }

    /// The GS base that is active in the current mode.
    pub fn active_gs_base(&self) -> u64 {
        if self.kernel_mode {
            self.gs_base_kernel
        } else {
            self.gs_base_user
        }
    }

    /// Initial register state of a PV guest's boot vCPU (`vcpu_x86_64` in libxc).
    pub fn boot(&mut self, entry: u64, stack_top: u64, start_info_va: u64, l4: Mfn) {
        self.frame = GuestFrame {
            rip: entry,
            rsp: stack_top,
            rsi: start_info_va,
            cs: u64::from(FLAT_KERNEL_CS),
            ss: u64::from(FLAT_KERNEL_SS),
            rflags: rflags::FIXED | rflags::IF,
            ..GuestFrame::default()
        };
        self.kernel_mode = true;
        self.kernel_ss = FLAT_KERNEL_SS;
        self.kernel_sp = stack_top;
        self.kernel_l4 = l4;
        self.user_l4 = None;
        self.state = RunState::Runnable;
    }
}

// ---------------------------------------------------------------------------------------------
// VCPUOP_* (Xen's common/domain.c `do_vcpu_op`): the vCPU's lifecycle, its timers and the
// guest memory it asks the hypervisor to keep current. The caller is the running domain;
// `hypercall/sched.rs` decodes and copies.

use crate::hv::Hypervisor;
use crate::mm::frame_table::PageType;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::sched::VcpuRef;
use hypercall_abi::xen::HYPERVISOR_VIRT_END;
use hypercall_abi::{Errno, PAGE_SIZE};

/// Size of a `vcpu_info` (what must fit in the page at the registered offset).
const VCPU_INFO_SIZE: u64 = core::mem::size_of::<hypercall_abi::xen::VcpuInfo>() as u64;
/// Alignment the hypervisor needs of a registered `vcpu_info`: its flags and selector are
/// updated with 8-byte atomics, and the exit path reads the flags as one word.
const VCPU_INFO_ALIGN: u64 = 8;
/// Shortest periodic timer period Xen accepts (1 ms).
pub const MIN_PERIOD_NS: u64 = 1_000_000;
/// Longest (Xen's `STIME_DELTA_MAX`).
pub const MAX_PERIOD_NS: u64 = u64::MAX >> 2;

/// True if a guest handle at `va` is one Xen accepts (`guest_handle_okay`: below the
/// canonical hole or above the hypervisor's range; only the start is checked).
pub fn handle_okay(va: u64) -> bool {
    !(1 << 47..HYPERVISOR_VIRT_END).contains(&va)
}

/// `VCPUOP_register_vcpu_info`: moves vCPU `vcpu`'s `vcpu_info` into guest frame `mfn` at
/// `offset`, as Xen's `map_vcpu_info`: the old contents are copied there, every selector bit
/// and the upcall are marked pending so that nothing is lost, and the frame is held (a
/// general and a writable type reference) until the domain goes. Once only.
pub fn register_vcpu_info<P: Platform>(
    hv: &mut Hypervisor<P>,
    vcpu: u32,
    mfn: u64,
    offset: u32,
) -> Result<(), Errno> {
    let me = hv.current();
    let offset = u64::from(offset);
    // Past the page or misaligned: -ENXIO, as Xen 4.17.7's map_vcpu_info.
    if offset > PAGE_SIZE as u64 - VCPU_INFO_SIZE || !offset.is_multiple_of(VCPU_INFO_ALIGN) {
        return Err(Errno::ENXIO);
    }
    let v = hv.cur_dom().vcpu(vcpu).ok_or(Errno::ENOENT)?;
    if v.vcpu_info_frame.is_some() {
        return Err(Errno::EINVAL);
    }
    // On itself, or on another vCPU that is down.
    if vcpu != me.vcpu && v.state != RunState::Offline {
        return Err(Errno::EINVAL);
    }
    let old_ma = v.vcpu_info;
    let mfn = Mfn(mfn);
    let mem = hv.plat.mem();
    hv.frames.get_page(mfn, me.domid).map_err(|_| Errno::EINVAL)?;
    if hv.frames.get_page_type(mem, mfn, PageType::Writable).is_err() {
        hv.frames.put_page(mfn);
        return Err(Errno::EINVAL);
    }
    let new = mfn.addr() + offset;
    let mut old = [0u8; VCPU_INFO_SIZE as usize];
    mem.read(old_ma, &mut old);
    mem.write(new, &old);
    let v = hv.domains.get_mut(&me.domid).and_then(|d| d.vcpu_mut(vcpu)).expect("checked above");
    v.vcpu_info = new;
    v.vcpu_info_frame = Some(mfn);
    v.info().mark_all_pending(mem);
    hv.kick_vcpu(VcpuRef { domid: me.domid, vcpu });
    // The exit path's upcall test and the arch layer's pointer follow the new address.
    hv.mark_hw_dirty();
    Ok(())
}

/// `VCPUOP_down`: takes vCPU `vcpu` offline; the domain's last vCPU going down shuts the
/// domain down (poweroff), as in Xen.
pub fn down<P: Platform>(hv: &mut Hypervisor<P>, vcpu: u32) {
    let me = hv.current().domid;
    let d = hv.cur_dom();
    let others_up = d.vcpus.iter().any(|v| v.id != vcpu && v.state != RunState::Offline);
    if !others_up {
        hv.shutdown_domain(me, crate::domain::ShutdownReason::Poweroff);
        return;
    }
    let r = VcpuRef { domid: me, vcpu };
    if let Some(v) = hv.cur_dom_mut().vcpu_mut(vcpu) {
        v.state = RunState::Offline;
    }
    hv.sleep_vcpu(r);
}

/// `VCPUOP_register_runstate_memory_area`: from now on vCPU `vcpu`'s runstate is copied to
/// guest address `va` whenever it changes CPU; it is copied once now. A zero address stops
/// the copies.
pub fn register_runstate_area<P: Platform>(hv: &mut Hypervisor<P>, vcpu: u32, va: u64) -> Result<(), Errno> {
    if !handle_okay(va) {
        return Err(Errno::EFAULT);
    }
    let d = hv.cur_dom_mut();
    let id = d.id;
    d.vcpu_mut(vcpu).ok_or(Errno::ENOENT)?.runstate_area = (va != 0).then_some(va);
    hv.publish_runstate(VcpuRef { domid: id, vcpu });
    Ok(())
}

/// `VCPUOP_register_vcpu_time_memory_area`: a second copy of vCPU `vcpu`'s PV clock at guest
/// address `va`, written now and whenever the vCPU gets the CPU. Zero stops it.
pub fn register_time_area<P: Platform>(hv: &mut Hypervisor<P>, vcpu: u32, va: u64) -> Result<(), Errno> {
    if !handle_okay(va) {
        return Err(Errno::EFAULT);
    }
    let d = hv.cur_dom_mut();
    let id = d.id;
    d.vcpu_mut(vcpu).ok_or(Errno::ENOENT)?.time_area = (va != 0).then_some(va);
    let tsc = hv.plat.tsc();
    hv.publish_time_area(VcpuRef { domid: id, vcpu }, tsc);
    Ok(())
}

/// `VCPUOP_set_periodic_timer` / `VCPUOP_stop_periodic_timer` (a zero period): vCPU `vcpu`
/// gets VIRQ_TIMER every `period_ns` while it runs, counting from now.
pub fn set_periodic_timer<P: Platform>(
    hv: &mut Hypervisor<P>,
    vcpu: u32,
    period_ns: u64,
) -> Result<(), Errno> {
    if period_ns != 0 && !(MIN_PERIOD_NS..=MAX_PERIOD_NS).contains(&period_ns) {
        return Err(Errno::EINVAL);
    }
    let now = hv.now_ns();
    let v = hv.cur_dom_mut().vcpu_mut(vcpu).ok_or(Errno::ENOENT)?;
    v.periodic_period_ns = period_ns;
    v.periodic_last_ns = now;
    // The next deadline changes: the exit path reprograms the timer.
    hv.refresh_periodic();
    hv.mark_hw_dirty();
    Ok(())
}

/// vCPU `vcpu`'s runstate as of now (`VCPUOP_get_runstate_info`).
pub fn runstate_now<P: Platform>(
    hv: &Hypervisor<P>,
    vcpu: u32,
) -> Result<hypercall_abi::vcpu::VcpuRunstateInfo, Errno> {
    let now = hv.now_ns();
    let v = hv.cur_dom().vcpu(vcpu).ok_or(Errno::ENOENT)?;
    Ok(crate::hv::runstate_info(&v.runstate.info_at(now)))
}
