//! The kernel's glue between the architecture layer and the core: the one `Hypervisor`
//! instance, the `Platform` it runs on, the Rust ends of the entry paths, the idle loop, the
//! hardware synchronisation on the way back to a guest, and the fatal-fault report.

use crate::arch::x86_64::{apic, cpu, entry, paging::DirectMap, serial};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use microvisor::hv::{exit_code, GuestExit, Hypervisor, Resume};
use microvisor::irq::IrqOp;
use microvisor::mm::tlb::{self, Flush};
use microvisor::platform::Platform;
use microvisor::traps;
use microvisor::vcpu::GuestFrame;

/// The machine as the core sees it.
pub struct Machine {
    pub mem: DirectMap,
}

impl Platform for Machine {
    type Mem = DirectMap;
    fn mem(&self) -> &DirectMap {
        &self.mem
    }
    fn tsc(&self) -> u64 {
        cpu::rdtsc()
    }
    fn console_write(&mut self, bytes: &[u8]) {
        serial::write_bytes(bytes);
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpu::cpuid(leaf, subleaf)
    }
    fn console_read(&mut self) -> Option<u8> {
        serial::try_read()
    }
    fn fpu_save(&mut self, area: &mut microvisor::vcpu::FpuArea) {
        with_ts_clear(|| cpu::fxsave(area));
    }
    fn fpu_restore(&mut self, area: &microvisor::vcpu::FpuArea) {
        with_ts_clear(|| cpu::fxrstor(area));
    }
}

/// Runs `f` (fxsave/fxrstor) with CR0.TS clear, which the guest's virtual TS may have set
/// (they would raise #NM in ring 0), and puts TS back as it was.
fn with_ts_clear(f: impl FnOnce()) {
    const TS: u64 = 1 << 3;
    let ts = cpu::read_cr0() & TS != 0;
    if ts {
        cpu::set_cr0_ts(false);
    }
    f();
    if ts {
        cpu::set_cr0_ts(true);
    }
}

pub type Hv = Hypervisor<Machine>;

/// The hypervisor, installed once at the end of boot (leaked: it lives as long as the
/// machine). One CPU; the hypervisor runs with interrupts disabled and never nests (see
/// entry.rs), and the only ring-0 interrupt handler (`trap_in_hypervisor`) does not touch it.
static HV: AtomicPtr<Hv> = AtomicPtr::new(core::ptr::null_mut());
static IN_HV: AtomicBool = AtomicBool::new(false);
/// `domid << 16 | vcpu` of the running vCPU, for fault reports (0xffff_ffff: none).
static RUNNING: AtomicU32 = AtomicU32::new(u32::MAX);
/// Set by the timer interrupt while idle.
static TIMER_FIRED: AtomicBool = AtomicBool::new(false);
/// GSIs that fired while idle (bit n = GSI n), handed to the core when idling ends.
static GSIS_FIRED: AtomicU32 = AtomicU32::new(0);

/// First half of a device interrupt: mask the level-triggered pin so it cannot fire again
/// before its owner has served the device, then acknowledge the local APIC.
fn device_interrupt(gsi: u32) {
    crate::arch::x86_64::ioapic::set_masked(gsi, true);
    apic::eoi();
}

/// Installs the hypervisor instance at the end of boot.
pub fn install(hv: Hv) {
    HV.store(alloc::boxed::Box::leak(alloc::boxed::Box::new(hv)), Ordering::Release);
}

/// Runs `f` with the hypervisor. Entry paths call this exactly once per entry.
fn with_hv<R>(f: impl FnOnce(&mut Hv) -> R) -> R {
    assert!(!IN_HV.swap(true, Ordering::Acquire), "hypervisor re-entered");
    let p = HV.load(Ordering::Acquire);
    assert!(!p.is_null(), "hypervisor installed before guests run");
    // SAFETY: `p` came from `Box::leak` in `install` and is never freed; the flag above proves
    // no other reference exists (single CPU, no nesting).
    let hv = unsafe { &mut *p };
    let r = f(hv);
    IN_HV.store(false, Ordering::Release);
    r
}

/// A hypercall from guest kernel mode (see entry.rs): arguments in registers, result in
/// `%rax`, and whether the exit path must run in `%rdx`.
pub extern "C" fn hypercall_general(a1: u64, a2: u64, a3: u64, a4: u64, a5: u64, nr: u64) -> entry::FastRet {
    // SAFETY: `syscall` from a guest is the only way here, and guests run only after
    // `install`; the hypervisor never executes `syscall` and runs with interrupts off, so no
    // other reference to the hypervisor exists. (This hot path skips `with_hv`'s re-entry
    // check, which cannot fire here for the same reasons.)
    let hv = unsafe { &mut *HV.load(Ordering::Relaxed) };
    let (rax, slow) = hv.hypercall_general(nr, a1, a2, a3, a4, a5);
    entry::FastRet { rax, slow: u64::from(slow) }
}

/// A fast hypercall that needs the exit path; its frame is in the live frame.
pub extern "C" fn hypercall_exit() {
    with_hv(exit_path);
}

/// `syscall` with the whole frame saved (guest user mode, or `iret`).
pub extern "C" fn syscall_slow() {
    with_hv(|hv| {
        // SAFETY: in the hypervisor with interrupts off; the reference ends before the return.
        let frame = unsafe { entry::live_frame() };
        hv.syscall_with_frame(frame);
        exit_path(hv);
    });
}

/// An exception or interrupt from a guest; `frame` is the live frame (or an IST stack).
pub extern "C" fn trap_from_guest(frame: *mut GuestFrame) {
    // SAFETY: the stub passes the frame it just built on the stack it runs on.
    let f = unsafe { &mut *frame };
    let vector = f.vector as u8;
    if matches!(vector, 2 | 8 | 18) {
        fatal(f, "machine exception while a guest ran");
    }
    if crate::arch::x86_64::floor::active() {
        if vector != 13 {
            fatal(f, "unexpected exception in the floor benchmark");
        }
        return with_hv(|hv| {
            crate::arch::x86_64::floor::finish(hv);
            exit_path(hv);
        });
    }
    with_hv(|hv| {
        match vector {
            apic::TIMER_VECTOR => {
                apic::eoi();
                hv.timer_tick();
            }
            apic::SPURIOUS_VECTOR => {}
            v if microvisor::irq::vector_to_gsi(v).is_some() => {
                let gsi = microvisor::irq::vector_to_gsi(v).expect("checked");
                device_interrupt(gsi);
                hv.pirq_fired(gsi);
            }
            0..=31 => {
                let cr2 = if vector == 14 { cpu::read_cr2() } else { 0 };
                hv.guest_exception(f, vector, cr2);
            }
            v => {
                apic::eoi();
                hv.log(format_args!("unexpected interrupt vector {v:#x}"));
            }
        }
        exit_path(hv);
    });
}

/// An interrupt or exception in ring 0: the timer while idle, or a hypervisor bug.
pub extern "C" fn trap_in_hypervisor(frame: *mut GuestFrame) {
    // SAFETY: the stub passes the frame it just pushed on the current stack.
    let f = unsafe { &mut *frame };
    match f.vector as u8 {
        apic::TIMER_VECTOR => {
            apic::eoi();
            TIMER_FIRED.store(true, Ordering::Release);
        }
        apic::SPURIOUS_VECTOR => {}
        v if microvisor::irq::vector_to_gsi(v).is_some() => {
            let gsi = microvisor::irq::vector_to_gsi(v).expect("checked");
            device_interrupt(gsi);
            GSIS_FIRED.fetch_or(1 << gsi, Ordering::AcqRel);
            TIMER_FIRED.store(true, Ordering::Release);
        }
        _ if crate::arch::x86_64::probe::recover(f) => {}
        _ => fatal(f, "fault in the hypervisor"),
    }
}

/// Decides what runs next and returns once the live frame holds a guest to return to.
fn exit_path(hv: &mut Hv) {
    // SAFETY: in the hypervisor with interrupts off; the reference ends when we return.
    let frame = unsafe { entry::live_frame() };
    loop {
        match hv.resume(frame) {
            Resume::Guest(exit) => {
                sync_hardware(hv, &exit);
                return;
            }
            Resume::Idle => idle(hv),
            Resume::Halt(code) => {
                if let Some(trace) = hv.finish_trace() {
                    serial::write_raw(serial::COM2, trace);
                }
                cpu::qemu_exit(code);
            }
        }
    }
}

/// Waits for the next timer interrupt with nothing to run.
fn idle(hv: &mut Hv) {
    RUNNING.store(u32::MAX, Ordering::Relaxed);
    match hv.next_deadline_ns() {
        Some(t) => {
            let now = hv.now_ns();
            if t <= now {
                hv.timer_tick();
                return;
            }
            apic::arm_after_tsc_ticks(hv.time().scale.ns_to_ticks(t - now));
        }
        None => {
            hv.log(format_args!("no domain can run and no timer is pending: stopping"));
            cpu::qemu_exit(exit_code::HYPERVISOR_FAULT);
        }
    }
    TIMER_FIRED.store(false, Ordering::Relaxed);
    while !TIMER_FIRED.load(Ordering::Acquire) {
        // SAFETY: `sti; hlt` atomically enables interrupts and waits (no lost wake-up);
        // the ring-0 interrupt path only sets TIMER_FIRED and returns here; interrupts are
        // disabled again before any other hypervisor code runs.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    let fired = GSIS_FIRED.swap(0, Ordering::AcqRel);
    for gsi in 0..32 {
        if fired & (1 << gsi) != 0 {
            hv.pirq_fired(gsi);
        }
    }
    hv.timer_tick();
}

/// The CPU's TLB, for the core's flush rule.
struct HwTlb;

impl tlb::TlbOps for HwTlb {
    fn load_cr3(&mut self, cr3: u64) {
        // SAFETY: every guest L4 carries the hypervisor's slots (the builder and the
        // page-table validator install them), so the hypervisor stays mapped.
        unsafe { cpu::write_cr3(cr3) };
    }
    fn invlpg(&mut self, va: u64) {
        cpu::invlpg(va);
    }
    fn flush_all(&mut self) {
        // Global entries too: guest user mappings carry G.
        cpu::flush_tlb_global();
    }
}

/// What the CPU was last set to, so the exit path only writes what changed.
struct Loaded {
    vcpu: Option<microvisor::sched::VcpuRef>,
    cr3: u64,
    fs_base: u64,
    gs_base: u64,
    fpu_ts: bool,
    timer_deadline: Option<u64>,
    /// Whose guest descriptors are in the GDT: vCPU, generation, number of entries.
    gdt: Option<(microvisor::sched::VcpuRef, u64)>,
    gdt_len: usize,
    io_ports: bool,
    kernel_mode: Option<bool>,
    vcpu_info: u64,
}

static mut LOADED: Loaded = Loaded {
    vcpu: None,
    cr3: 0,
    fs_base: 0,
    gs_base: 0,
    fpu_ts: false,
    timer_deadline: None,
    gdt: None,
    gdt_len: 0,
    io_ports: false,
    kernel_mode: None,
    vcpu_info: 0,
};

/// Makes the CPU match the running vCPU and applies what the core handed over: page tables,
/// TLB flush, guest GDT, the fast path's `vcpu_info` pointer and mode, I/O access, segment
/// bases, TS, interrupt-controller changes and the next timer deadline. Only what changed is
/// written. The core owes nothing once it returned `exit` (it loaded the FPU registers
/// itself), so nothing here may call back into it except to read.
fn sync_hardware(hv: &mut Hv, exit: &GuestExit) {
    // SAFETY: only touched here, with interrupts off, on the one CPU.
    let l = unsafe { &mut *core::ptr::addr_of_mut!(LOADED) };
    let hw = exit.hw;
    let mut flush = exit.flush;
    if l.vcpu != Some(hw.vcpu) {
        if l.vcpu.map(|p| p.domid) != Some(hw.vcpu.domid) {
            // Guest user mappings are global (Xen's rule); none may leak to another domain.
            flush = Flush::All;
        }
        l.vcpu = Some(hw.vcpu);
        RUNNING.store(u32::from(hw.vcpu.domid.0) << 16 | hw.vcpu.vcpu, Ordering::Relaxed);
    }
    let new_cr3 = (l.cr3 != hw.cr3).then_some(hw.cr3);
    l.cr3 = hw.cr3;
    if tlb::switch_and_flush(&mut HwTlb, new_cr3, flush) {
        hv.tlb_flushed();
    }
    let gdt = Some((hw.vcpu, hw.gdt_generation));
    if l.gdt != gdt && (l.gdt_len > 0 || !hv.running_gdt().is_empty()) {
        let entries = hv.running_gdt();
        crate::arch::x86_64::gdt::load_guest_descriptors(entries, l.gdt_len);
        l.gdt_len = entries.len();
    }
    l.gdt = gdt;
    if l.vcpu_info != hw.vcpu_info {
        // The fast path reads this word in place; make sure it is RAM.
        assert!(hw.vcpu_info >> 12 < hv.platform().mem.max_mfn.0 && hw.vcpu_info.is_multiple_of(8));
        entry::set_cur_vcpu_info(DirectMap::virt(hw.vcpu_info));
        l.vcpu_info = hw.vcpu_info;
    }
    if l.io_ports != hw.io_ports {
        crate::arch::x86_64::gdt::set_io_access(hw.io_ports);
        l.io_ports = hw.io_ports;
    }
    if l.fs_base != hw.fs_base {
        cpu::wrmsr(cpu::msr::FS_BASE, hw.fs_base);
        l.fs_base = hw.fs_base;
    }
    if l.gs_base != hw.gs_base {
        cpu::wrmsr(cpu::msr::GS_BASE, hw.gs_base);
        l.gs_base = hw.gs_base;
    }
    if l.fpu_ts != hw.fpu_ts {
        cpu::set_cr0_ts(hw.fpu_ts);
        l.fpu_ts = hw.fpu_ts;
    }
    if !exit.irq.is_empty() {
        for op in exit.irq.iter() {
            match op {
                IrqOp::Route(g) => crate::arch::x86_64::ioapic::route(g),
                IrqOp::Mask(g) => crate::arch::x86_64::ioapic::set_masked(g, true),
                IrqOp::Unmask(g) => crate::arch::x86_64::ioapic::set_masked(g, false),
            }
        }
    }
    if l.kernel_mode != Some(hw.kernel_mode) {
        entry::set_guest_kernel_mode(hw.kernel_mode, hv.trace_on());
        l.kernel_mode = Some(hw.kernel_mode);
    }
    if exit.timer_deadline_ns != l.timer_deadline {
        match exit.timer_deadline_ns {
            Some(t) => apic::arm_after_tsc_ticks(hv.time().scale.ns_to_ticks(t.saturating_sub(hv.now_ns()))),
            None => apic::disarm(),
        }
        l.timer_deadline = exit.timer_deadline_ns;
    }
}

/// Prints a readable report of a fault the hypervisor cannot survive and stops QEMU.
pub fn fatal(f: &GuestFrame, what: &str) -> ! {
    let mut w = SerialWriter;
    let running = RUNNING.load(Ordering::Relaxed);
    let _ = writeln!(w, "(XEN) ****************************************");
    let _ = writeln!(w, "(XEN) FATAL: {what}");
    let _ = writeln!(
        w,
        "(XEN) vector {:#x} ({}) error code {:#x}",
        f.vector,
        traps::vector::name(f.vector as u8),
        f.error_code
    );
    let _ = writeln!(w, "(XEN) rip {:#018x} cs {:#x} rflags {:#x}", f.rip, f.cs, f.rflags);
    let _ = writeln!(
        w,
        "(XEN) rsp {:#018x} ss {:#x} cr2 {:#018x} cr3 {:#018x}",
        f.rsp,
        f.ss,
        cpu::read_cr2(),
        cpu::read_cr3()
    );
    let _ =
        writeln!(w, "(XEN) rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}", f.rax, f.rbx, f.rcx, f.rdx);
    let _ =
        writeln!(w, "(XEN) rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}", f.rsi, f.rdi, f.rbp, f.r8);
    let _ =
        writeln!(w, "(XEN) r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}", f.r9, f.r10, f.r11, f.r12);
    let _ = writeln!(w, "(XEN) r13 {:#018x} r14 {:#018x} r15 {:#018x}", f.r13, f.r14, f.r15);
    if running == u32::MAX {
        let _ = writeln!(w, "(XEN) running: idle");
    } else {
        let _ = writeln!(w, "(XEN) running: d{}v{}", running >> 16, running & 0xffff);
    }
    let _ = writeln!(w, "(XEN) ****************************************");
    cpu::qemu_exit(exit_code::HYPERVISOR_FAULT)
}

/// Unbuffered writes straight to COM1, for fatal paths that cannot rely on any state.
pub struct SerialWriter;

impl Write for SerialWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        serial::write_bytes(s.as_bytes());
        Ok(())
    }
}

/// The running vCPU as `(domid, vcpu)`, if any (for the panic report).
pub fn running() -> Option<(u32, u32)> {
    let r = RUNNING.load(Ordering::Relaxed);
    (r != u32::MAX).then_some((r >> 16, r & 0xffff))
}

/// Leaves boot: runs the scheduler for the first time and enters the chosen guest. With
/// `floor_iters`, the ring-3 latency floor is measured first (its end starts the guests).
pub fn start(floor_iters: Option<u64>, hv_slots: &[u64; crate::arch::x86_64::paging::NR_HV_SLOTS]) -> ! {
    match floor_iters {
        Some(n) => with_hv(|hv| crate::arch::x86_64::floor::prepare(hv, n, hv_slots)),
        None => with_hv(exit_path),
    }
    entry::enter_guest()
}
