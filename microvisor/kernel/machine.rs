//! The kernel's glue between the architecture layer and the core: the one `Hypervisor`
//! instance, the `Platform` it runs on, what each entry path does (called by entry.rs's Rust
//! ends), the exit path and idle loop, and the fatal-fault report. Safe code, and the
//! compiler holds it to that (`forbid(unsafe_code)`): the hardware access and `unsafe` it
//! needs live under `arch/`.

#![forbid(unsafe_code)]

use crate::arch::x86_64::cpu_local::CpuLocal;
use crate::arch::x86_64::entry::Live;
use crate::arch::x86_64::{apic, cpu, entry, guest_copy, paging::DirectMap, serial};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use hypercall_abi::{Errno, Mfn};
use microvisor::guest_mem::GuestRange;
use microvisor::hv::{exit_code, Hypervisor, Resume};
use microvisor::platform::Platform;
use microvisor::traps;
use microvisor::vcpu::GuestFrame;
use microvisor::x86::{rflags, vector};

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
    fn live_segment_bases(&self, vcpu: microvisor::sched::VcpuRef) -> Option<(u64, u64)> {
        crate::arch::x86_64::sync::live_segment_bases(vcpu)
    }
    fn live_data_selectors(&self, vcpu: microvisor::sched::VcpuRef) -> Option<[u16; 4]> {
        crate::arch::x86_64::sync::live_data_selectors(vcpu)
    }
    fn rdmsr_safe(&self, msr: u32) -> Option<u64> {
        crate::arch::x86_64::probe::rdmsr_safe(msr)
    }
    fn console_read(&mut self) -> Option<u8> {
        serial::try_read()
    }
    fn wbinvd(&mut self) {
        cpu::wbinvd();
    }
    #[inline(always)]
    fn copy_from_guest(&self, l4: Mfn, va: GuestRange, buf: &mut [u8]) -> Option<Result<(), Errno>> {
        guest_copy::loaded(l4).then(|| guest_copy::read(va, buf))
    }
    #[inline(always)]
    fn copy_to_guest(&self, l4: Mfn, va: GuestRange, data: &[u8]) -> Option<Result<(), Errno>> {
        guest_copy::loaded(l4).then(|| guest_copy::write(va, data))
    }
    fn fpu_save(&mut self, area: &mut microvisor::vcpu::FpuArea) {
        cpu::fxsave(area);
    }
    fn fpu_restore(&mut self, area: &microvisor::vcpu::FpuArea) {
        cpu::fxrstor(area);
    }
}

pub type Hv = Hypervisor<Machine>;

/// The hypervisor, installed once at the end of boot. One CPU; the hypervisor runs with
/// interrupts disabled and never nests (see entry.rs), and the only ring-0 interrupt handler
/// (`trap_in_hypervisor`) does not touch it.
pub static HV: CpuLocal<Option<alloc::boxed::Box<Hv>>> = CpuLocal::new(None);
/// `domid << 16 | vcpu` of the running vCPU, for fault reports (0xffff_ffff: none).
static RUNNING: AtomicU32 = AtomicU32::new(u32::MAX);
/// Set by the timer interrupt while idle.
static TIMER_FIRED: AtomicBool = AtomicBool::new(false);
/// GSIs that fired while idle (bit n = GSI n), handed to the core when idling ends.
static GSIS_FIRED: AtomicU32 = AtomicU32::new(0);

/// Records the running vCPU for fault reports.
#[inline(always)]
pub fn note_running(r: Option<microvisor::sched::VcpuRef>) {
    let v = r.map_or(u32::MAX, |r| u32::from(r.domid.0) << 16 | r.vcpu);
    RUNNING.store(v, Ordering::Relaxed);
}

/// First half of a device interrupt: mask the level-triggered pin so it cannot fire again
/// before its owner has served the device, then acknowledge the local APIC.
fn device_interrupt(gsi: u32) {
    crate::arch::x86_64::ioapic::set_masked(gsi, true);
    apic::eoi();
}

/// Installs the hypervisor instance at the end of boot.
pub fn install(hv: Hv) {
    HV.with(|slot| *slot = Some(alloc::boxed::Box::new(hv)));
}

/// Runs `f` with the hypervisor. Entry paths call this exactly once per entry.
#[inline(always)]
fn with_hv<R>(f: impl FnOnce(&mut Hv) -> R) -> R {
    HV.with(|hv| f(hv.as_deref_mut().expect("hypervisor installed before guests run")))
}

/// A hypercall from guest kernel mode (see entry.rs): arguments in registers; returns the
/// result for `%rax` and whether the exit path must run. A flush the hypercall asked for
/// without needing the exit path is carried out here.
#[inline(always)]
pub fn hypercall_general(hv: &mut Hv, args: &[u64; 5], nr: u64) -> entry::FastRet {
    let r = hv.hypercall_general(nr, args);
    if r.straight() {
        return entry::FastRet { rax: r.rax, slow: 0 };
    }
    if !r.slow() {
        crate::arch::x86_64::sync::flush_now(hv, r.flush());
    }
    entry::FastRet { rax: r.rax, slow: u64::from(r.slow()) }
}

/// A fast hypercall that needs the exit path; the live frame holds what it built.
#[inline(always)]
pub fn hypercall_exit(live: Live) {
    with_hv(|hv| exit_path(hv, live));
}

/// `syscall` with the whole frame saved (guest user mode, 32-bit code, or `iret`).
#[inline(always)]
pub fn syscall_slow(mut live: Live) {
    with_hv(|hv| {
        hv.syscall_with_frame(live.frame());
        exit_path(hv, live);
    });
}

/// An exception or interrupt from a guest, in the live frame (NMI, #DF and #MC never get
/// here: the arch layer stops the machine on them).
#[inline(always)]
pub fn trap_from_guest(mut live: Live) {
    let vector = live.frame().vector as u8;
    #[cfg(feature = "test-aids")]
    if crate::arch::x86_64::floor::active() {
        if vector != 13 {
            fatal(live.frame(), "unexpected exception in the floor benchmark");
        }
        return with_hv(|hv| {
            crate::arch::x86_64::floor::finish(hv);
            exit_path(hv, live);
        });
    }
    with_hv(|hv| {
        match vector {
            apic::TIMER_VECTOR => {
                apic::eoi();
                hv.timer_tick();
            }
            apic::SPURIOUS_VECTOR => {}
            microvisor::x86::vector::LEGACY_SYSCALL => {
                if let traps::ExceptionOutcome::Crash(why) = traps::legacy_syscall(hv, live.frame()) {
                    let id = hv.current().domid;
                    hv.crash_domain(id, format_args!("{why}"));
                }
            }
            v if microvisor::irq::vector_to_gsi(v).is_some() => {
                let gsi = microvisor::irq::vector_to_gsi(v).expect("checked");
                device_interrupt(gsi);
                hv.pirq_fired(gsi);
            }
            0..=31 => {
                let info = match vector {
                    vector::PF => cpu::read_cr2(),
                    vector::DB => cpu::debugreg::take_dr6(),
                    _ => 0,
                };
                if vector == vector::PF && smap_quirk(hv, live.frame(), info) {
                    // SMAP is now off: the guest retries its far return as it was.
                } else {
                    hv.guest_exception(live.frame(), vector, info);
                }
            }
            v => {
                apic::eoi();
                hv.log(format_args!("unexpected interrupt vector {v:#x}"));
            }
        }
        exit_path(hv, live);
    });
}

/// QEMU 7.2 TCG's SMAP quirk (`microvisor::emulate::is_tcg_smap_quirk`): a guest's ring-3
/// `iretq`/far return faults on its own stack with SMAP on. Xen 4.17 shares it and needs
/// `smap=0`; here the first such fault turns SMAP off for good, with one structured line, and
/// the guest retries. SMEP stays on. Real hardware never reports this fault, so there SMAP
/// stays on. Returns true if it was the quirk.
fn smap_quirk(hv: &mut Hv, f: &GuestFrame, cr2: u64) -> bool {
    if !cpu::smap_enabled() || !microvisor::emulate::is_tcg_smap_quirk(hv, f, f.error_code, cr2) {
        return false;
    }
    cpu::disable_smap();
    hv.log(format_args!(
        "smap-quirk detected=1 smap=0 smep={}: this CPU reads a ring-3 far return's stack as a supervisor access (QEMU TCG); SMAP is off from now on",
        u8::from(cpu::read_cr4() & cpu::cr4::SMEP != 0)
    ));
    true
}

/// An interrupt or exception in ring 0: the timer while idle, or a hypervisor bug.
#[inline(always)]
pub fn trap_in_hypervisor(f: &mut GuestFrame) {
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
        vector::DB => debug_in_hypervisor(f),
        _ if guest_copy::fixup(f) => {}
        _ if crate::arch::x86_64::probe::recover(f) => {}
        _ => fatal(f, "fault in the hypervisor"),
    }
}

/// A #DB in ring 0, which no guest breakpoint should cause (their addresses lie outside the
/// hypervisor, which never touches guest virtual addresses, and `syscall` clears TF): noted
/// once and resumed past, as Xen does, with RF set so an instruction breakpoint cannot fire
/// again on the same instruction.
fn debug_in_hypervisor(f: &mut GuestFrame) {
    static SEEN: AtomicBool = AtomicBool::new(false);
    let dr6 = cpu::debugreg::take_dr6();
    if !SEEN.swap(true, Ordering::Relaxed) {
        let _ = writeln!(SerialWriter, "(XEN) #DB in the hypervisor at {:#x}, dr6 {dr6:#x}: resumed", f.rip);
    }
    f.rflags = (f.rflags & !rflags::TF) | rflags::RF;
}

/// Decides what runs next and returns once the live frame holds a guest to return to.
fn exit_path(hv: &mut Hv, mut live: Live) {
    loop {
        // Matched by reference: the exit is read where `resume` wrote it, not moved out first.
        match &hv.resume(live.frame()) {
            Resume::Guest(exit) => {
                crate::arch::x86_64::sync::sync_hardware(hv, exit);
                return;
            }
            Resume::Idle => idle(hv),
            &Resume::Halt(code) => {
                let _ = writeln!(SerialWriter, "(XEN) guest-copy faults={}", guest_copy::faults());
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
    note_running(None);
    match hv.next_deadline_ns() {
        Some(t) => {
            let now = hv.now_ns();
            if t <= now {
                hv.timer_tick();
                return;
            }
            apic::arm_after_tsc_ticks(hv.time().scale.ns_to_ticks(t - now));
            crate::arch::x86_64::sync::timer_armed_in_idle(t);
        }
        None => {
            hv.log(format_args!("no domain can run and no timer is pending: stopping"));
            cpu::qemu_exit(exit_code::HYPERVISOR_FAULT);
        }
    }
    TIMER_FIRED.store(false, Ordering::Relaxed);
    while !TIMER_FIRED.load(Ordering::Acquire) {
        // The ring-0 interrupt handler only sets TIMER_FIRED (and GSIS_FIRED).
        cpu::wait_for_interrupt();
    }
    let fired = GSIS_FIRED.swap(0, Ordering::AcqRel);
    for gsi in 0..32 {
        if fired & (1 << gsi) != 0 {
            hv.pirq_fired(gsi);
        }
    }
    hv.timer_tick();
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
#[cfg(feature = "test-aids")]
pub fn start(floor_iters: Option<u64>, hv_slots: &[u64; crate::arch::x86_64::paging::NR_HV_SLOTS]) -> ! {
    entry::enter_first_guest(|mut live| match floor_iters {
        Some(n) => with_hv(|hv| crate::arch::x86_64::floor::prepare(hv, n, hv_slots, live.frame())),
        None => with_hv(|hv| exit_path(hv, live)),
    })
}

/// Leaves boot: runs the scheduler for the first time and enters the chosen guest.
#[cfg(not(feature = "test-aids"))]
pub fn start() -> ! {
    entry::enter_first_guest(|live| with_hv(|hv| exit_path(hv, live)))
}
