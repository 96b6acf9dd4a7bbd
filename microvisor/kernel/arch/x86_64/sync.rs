//! The exit path's last step: make the CPU match the vCPU the core chose (page tables and
//! TLB, GDT entries, I/O bitmap, segment bases, FPU and TS, the syscall entry of its mode, its
//! CR4 bits and debug registers, the timer), writing only what changed since the last exit.

use super::cpu_local::CpuLocal;
use super::{apic, cpu, entry, paging::DirectMap};
use crate::machine::Hv;
use microvisor::hv::{GuestExit, HwState};
use microvisor::irq::IrqOp;
use microvisor::mm::tlb::{self, Flush};

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

/// Carries out a flush on the hypercall return path, with the loaded page tables unchanged
/// (the core hands one over only when nothing else must change).
#[inline(always)]
pub fn flush_now(hv: &mut Hv, flush: Flush) {
    if tlb::switch_and_flush(&mut HwTlb, None, flush) {
        hv.tlb_flushed();
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
    ldt_len: usize,
    io_ports: bool,
    kernel_mode: Option<bool>,
    vcpu_info: u64,
    /// The guest-owned CR4 bits in the CPU.
    guest_cr4: u64,
    /// Whose debug registers are loaded (vCPU, generation), and whether DR7 arms any.
    debug: Option<(microvisor::sched::VcpuRef, u64)>,
    dr7_armed: bool,
    /// The `MSR_TSC_AUX` in the CPU (0 after reset).
    tsc_aux: u32,
    /// The hardware state of the last exit, once everything above was synced from it; `None`
    /// when something since was read back from the CPU (the segment bases, which a guest
    /// changes without the hypervisor seeing it), so the next exit compares field by field.
    synced: Option<HwState>,
}

static LOADED: CpuLocal<Loaded> = CpuLocal::new(Loaded {
    vcpu: None,
    cr3: 0,
    fs_base: 0,
    gs_base: 0,
    fpu_ts: false,
    timer_deadline: None,
    gdt: None,
    gdt_len: 0,
    ldt_len: 0,
    io_ports: false,
    kernel_mode: None,
    vcpu_info: 0,
    guest_cr4: 0,
    debug: None,
    dr7_armed: false,
    tsc_aux: 0,
    synced: None,
});

/// Makes the CPU match the running vCPU and applies what the core handed over: page tables,
/// TLB flush, guest GDT, the fast path's `vcpu_info` pointer and mode, I/O access, segment
/// bases, TS, interrupt-controller changes, the guest's CR4 bits, debug registers and TSC_AUX,
/// and the next timer deadline. Only what changed is
/// written. The core owes nothing once it returned `exit` (it loaded the FPU registers
/// itself), so nothing here may call back into it except to read.
#[inline(always)]
pub fn sync_hardware(hv: &mut Hv, exit: &GuestExit) {
    // SAFETY: only the exit path calls this, once per exit, with interrupts off on the one
    // CPU: nothing else holds a reference to `LOADED`. (Unchecked: this runs on every slow exit.)
    let l = unsafe { LOADED.get_unchecked() };
    // Read where `resume` wrote it: a copy of the whole state cost every slow exit ~25.
    let hw = &exit.hw;
    // The common slow exit (an upcall, an `iret`, a trap) back to the vCPU it came from,
    // with nothing changed: one comparison instead of one per piece of state.
    if l.synced.as_ref() == Some(hw)
        && exit.flush == Flush::None
        && exit.irq.is_empty()
        && exit.timer_deadline_ns == l.timer_deadline
    {
        return;
    }
    let mut flush = exit.flush;
    let switched = l.vcpu != Some(hw.vcpu);
    if switched {
        if l.vcpu.map(|p| p.domid) != Some(hw.vcpu.domid) {
            // Guest user mappings are global (Xen's rule); none may leak to another domain.
            flush = Flush::All;
        }
        l.vcpu = Some(hw.vcpu);
        crate::machine::note_running(Some(hw.vcpu));
    }
    let new_cr3 = (l.cr3 != hw.cr3).then_some(hw.cr3);
    l.cr3 = hw.cr3;
    if tlb::switch_and_flush(&mut HwTlb, new_cr3, flush) {
        hv.tlb_flushed();
    }
    let gdt = Some((hw.vcpu, hw.gdt_generation));
    if l.gdt != gdt && (l.gdt_len > 0 || !hv.running_gdt().is_empty()) {
        let entries = hv.running_gdt();
        super::gdt::load_guest_descriptors(entries, l.gdt_len);
        l.gdt_len = entries.len();
    }
    if l.gdt != gdt && (l.ldt_len > 0 || !hv.running_ldt().is_empty()) {
        let entries = hv.running_ldt();
        super::gdt::load_guest_ldt(entries);
        l.ldt_len = entries.len();
    }
    l.gdt = gdt;
    if switched {
        // The outgoing vCPU's selectors were saved (`live_data_selectors`); the incoming
        // one's go in after its GDT and LDT, and with them its FS and GS bases. Only here:
        // a vCPU that stays on the CPU keeps the selectors it loaded itself.
        let sels = hv.running_data_selectors();
        // SAFETY: the core hands over only selectors that load with the tables just loaded
        // (null otherwise).
        if unsafe { cpu::load_data_selectors(sels, cpu::data_selectors()) } {
            cpu::wrmsr(cpu::msr::FS_BASE, hw.fs_base);
            cpu::wrmsr(cpu::msr::GS_BASE, hw.gs_base);
            l.fs_base = hw.fs_base;
            l.gs_base = hw.gs_base;
        }
    }
    if l.vcpu_info != hw.vcpu_info {
        // The fast path reads this word in place; make sure it is RAM.
        assert!(hw.vcpu_info >> 12 < hv.platform().mem.max_mfn.0 && hw.vcpu_info.is_multiple_of(8));
        entry::set_cur_vcpu_info(DirectMap::virt(hw.vcpu_info));
        l.vcpu_info = hw.vcpu_info;
    }
    if l.io_ports != hw.io_ports {
        super::gdt::set_io_access(hw.io_ports);
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
                IrqOp::Route(g) => super::ioapic::route(g),
                IrqOp::Mask(g) => super::ioapic::set_masked(g, true),
                IrqOp::Unmask(g) => super::ioapic::set_masked(g, false),
            }
        }
    }
    if l.kernel_mode != Some(hw.kernel_mode) {
        entry::set_guest_kernel_mode(hw.kernel_mode, hv.trace_on());
        l.kernel_mode = Some(hw.kernel_mode);
    }
    if l.guest_cr4 != hw.guest_cr4 {
        cpu::set_guest_cr4(hw.guest_cr4);
        l.guest_cr4 = hw.guest_cr4;
    }
    let debug = Some((hw.vcpu, hw.debug_generation));
    if l.debug != debug && (hw.dr7 != 0 || l.dr7_armed) {
        if hw.dr7 != 0 {
            let (dr, dr6) = hv.running_debugregs();
            cpu::debugreg::load(dr, dr6, hw.dr7);
        } else {
            cpu::debugreg::set_dr7(microvisor::x86::dr::DR7_DEFAULT);
        }
        l.dr7_armed = hw.dr7 != 0;
    }
    l.debug = debug;
    if l.tsc_aux != hw.tsc_aux && cpu::has_tsc_aux() {
        cpu::wrmsr(cpu::msr::TSC_AUX, u64::from(hw.tsc_aux));
        l.tsc_aux = hw.tsc_aux;
    }
    if exit.timer_deadline_ns != l.timer_deadline {
        match exit.timer_deadline_ns {
            Some(t) => apic::arm_after_tsc_ticks(hv.time().scale.ns_to_ticks(t.saturating_sub(hv.now_ns()))),
            None => apic::disarm(),
        }
        l.timer_deadline = exit.timer_deadline_ns;
    }
    l.synced = Some(*hw);
}

/// Records that the APIC timer was armed for `deadline_ns` outside the exit path (the idle
/// loop arms it for the next deadline of any vCPU), so the next exit compares its deadline
/// with what the APIC really holds: otherwise an exit whose deadline equals the one recorded
/// before idling skips the arming while the APIC, having fired in idle, is disarmed, and that
/// deadline never fires.
pub fn timer_armed_in_idle(deadline_ns: u64) {
    LOADED.with(|l| l.timer_deadline = Some(deadline_ns));
}

/// The FS base and active GS base in the CPU if it holds `vcpu`'s (the last exit synced it),
/// read from the CPU, which also refreshes what `sync_hardware` believes is loaded: a guest
/// loading `%fs`/`%gs` changes the bases without the hypervisor seeing it.
pub fn live_segment_bases(vcpu: microvisor::sched::VcpuRef) -> Option<(u64, u64)> {
    LOADED.with(|l| {
        if l.vcpu != Some(vcpu) {
            return None;
        }
        l.fs_base = cpu::rdmsr(cpu::msr::FS_BASE);
        l.gs_base = cpu::rdmsr(cpu::msr::GS_BASE);
        l.synced = None;
        Some((l.fs_base, l.gs_base))
    })
}

/// The data segment selectors in the CPU if it holds `vcpu`'s (the last exit synced it): the
/// guest loads them itself, so the CPU is the truth until another vCPU comes on.
pub fn live_data_selectors(vcpu: microvisor::sched::VcpuRef) -> Option<[u16; 4]> {
    LOADED.with(|l| (l.vcpu == Some(vcpu)).then(cpu::data_selectors))
}
