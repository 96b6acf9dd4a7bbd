//! `debugreg` and `iopl`: the virtual CPU state Xen keeps for a PV vCPU beyond its registers
//! (issue 11, item 3), checked against Xen 4.17's answers.
//!
//! * `debugreg`: `set_debugreg`/`get_debugreg` with Xen's validation, `mov` to and from
//!   %dr0-%dr7 (emulated), breakpoints and single-step really armed for the guest (an
//!   instruction breakpoint, a data breakpoint, a single step over a plain and over an
//!   emulated instruction, an I/O breakpoint with CR4.DE), the guest's CR4 (what reads back
//!   after a write, TSD making the kernel's `rdtsc`/`rdtscp` emulated, `rdpid` reading the
//!   same TSC_AUX), and a `mov %ss` with a data
//!   breakpoint right before a hypercall (XSA-260: the hypervisor must survive it).
//! * `segbase`: the CPU's `%fs`/`%gs` bases stay the truth when the guest changes them by
//!   loading a selector (see [`segbase`]).
//! * `iopl`: `cli`, `sti`, `in` and `out` decided by the virtual IOPL (`PHYSDEVOP_set_iopl`,
//!   `VMASST_TYPE_architectural_iopl`): #GP(0) without it; with it `cli`/`sti` complete as
//!   no-ops and ports the domain has no rights to read as ones, except the RTC index and the
//!   PCI configuration address, which latch what was written.

use super::checks::Results;
use super::traps::{recoverable, skip_or_die};
use alloc::format;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::hypercall::nr;
use hypercall_abi::physdev::{op as physdev, PhysdevSetIopl};
use hypercall_abi::xen::{segbase, vmasst};
use pv_guest_kernel::hypercall;
use pv_guest_kernel::traps::{self, TrapFrame};

const DB: u8 = 1;
const UD: u8 = 6;
const GP: u8 = 13;
const EPERM: i64 = -1;
const EINVAL: i64 = -22;
const ENODEV: i64 = -19;
const TF: u64 = 1 << 8;
const RF: u64 = 1 << 16;
const CR4_TSD: u64 = 1 << 2;
const CR4_DE: u64 = 1 << 3;
/// The CR4 a PV guest reads on Xen before writing it, on QEMU's `-cpu max`: PAE, MCE, OSFXSR
/// and OSXMMEXCPT (Xen's `PV_CR4_GUEST_VISIBLE_MASK` of what the CPU has).
const CR4_VISIBLE: u64 = (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10);
/// DR6 and DR7 as they read with nothing recorded or enabled.
const DR6_DEFAULT: u64 = 0xffff_0ff0;
const DR7_DEFAULT: u64 = 0x400;
const DR6_BS: u64 = 1 << 14;
/// DR7 enable and control fields of breakpoint `n`.
const fn dr7_local(n: u64) -> u64 {
    1 << (2 * n)
}
const fn dr7_control(n: u64, rw: u64, len: u64) -> u64 {
    (rw | (len << 2)) << (16 + 4 * n)
}
const RW_EXEC: u64 = 0b00;
const RW_WRITE: u64 = 0b01;
const RW_IO: u64 = 0b10;
const RW_READ_WRITE: u64 = 0b11;
const LEN_1: u64 = 0b00;
const LEN_2: u64 = 0b01;
const LEN_8: u64 = 0b10;
const MSR_FS_BASE: u32 = 0xc000_0100;

/// What the last probe raised (`NONE` if it completed) and its error code.
const NONE: u64 = u64::MAX;
static CAUGHT: AtomicU64 = AtomicU64::new(NONE);
static CAUGHT_EC: AtomicU64 = AtomicU64::new(0);

fn catch(f: &mut TrapFrame) {
    CAUGHT.store(f.vector, Ordering::SeqCst);
    CAUGHT_EC.store(f.error_code, Ordering::SeqCst);
    skip_or_die(f);
}

/// Runs one recoverable probe and names what it raised: `done`, `#GP0`, `#GP` (another error
/// code) or the vector's mnemonic.
fn outcome(probe: impl FnOnce()) -> &'static str {
    CAUGHT.store(NONE, Ordering::SeqCst);
    probe();
    match CAUGHT.load(Ordering::SeqCst) {
        NONE => "done",
        v if v == u64::from(GP) && CAUGHT_EC.load(Ordering::SeqCst) == 0 => "#GP0",
        v => traps::name(v),
    }
}

/// #DB as the guest's handler saw it: how many, the last RIP, and DR6 read in the handler.
static DB_COUNT: AtomicU64 = AtomicU64::new(0);
static DB_RIP: AtomicU64 = AtomicU64::new(0);
static DB_DR6: AtomicU64 = AtomicU64::new(0);

/// Records the #DB, resets DR6 as a kernel does, and resumes: RF set so that an instruction
/// breakpoint does not fire again on the same instruction, TF cleared to end a single step.
fn on_debug(f: &mut TrapFrame) {
    DB_COUNT.fetch_add(1, Ordering::SeqCst);
    DB_RIP.store(f.rip, Ordering::SeqCst);
    DB_DR6.store(get_debugreg(6) as u64, Ordering::SeqCst);
    set_debugreg(6, 0);
    f.rflags = (f.rflags | RF) & !TF;
}

/// The #DBs a probe caused: (count, RIP of the last, its DR6).
fn debug_events(probe: impl FnOnce()) -> (u64, u64, u64) {
    let before = DB_COUNT.load(Ordering::SeqCst);
    probe();
    (DB_COUNT.load(Ordering::SeqCst) - before, DB_RIP.load(Ordering::SeqCst), DB_DR6.load(Ordering::SeqCst))
}

fn set_debugreg(reg: u64, value: u64) -> i64 {
    hypercall::hypercall5(nr::SET_DEBUGREG, reg, value, 0, 0, 0)
}

fn get_debugreg(reg: u64) -> i64 {
    hypercall::hypercall5(nr::GET_DEBUGREG, reg, 0, 0, 0, 0)
}

fn set_iopl(iopl: u32) -> i64 {
    let arg = PhysdevSetIopl { iopl };
    hypercall::hypercall5(nr::PHYSDEV_OP, u64::from(physdev::SET_IOPL), hypercall::ptr(&arg), 0, 0, 0)
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: emulated for a PV kernel: reads its virtual CR4.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nostack)) };
    v
}

fn write_cr4(v: u64) -> &'static str {
    outcome(|| recoverable!("mov {v}, %cr4", v = in(reg) v))
}

global_asm!(
    ".pushsection .text.tg_vcpu_state, \"ax\"",
    // An instruction breakpoint's target.
    ".globl tg_exec_target",
    "tg_exec_target:",
    "    nop",
    "    ret",
    ".popsection",
    options(att_syntax)
);
extern "C" {
    fn tg_exec_target();
}

/// Written while a data breakpoint covers it.
static WATCHED: AtomicU64 = AtomicU64::new(0);
/// Loaded into %ss while a data breakpoint covers it.
static SS_WORD: AtomicU64 = AtomicU64::new(0);

/// Sets TF and runs `insn`; returns the address after it, where the single step must trap.
macro_rules! single_step {
    ($insn:literal $(, $($operands:tt)+)?) => {{
        let after: u64;
        // SAFETY: TF traps after the instruction; the #DB handler clears it. The instruction
        // is the caller's and touches only what its operands say.
        unsafe {
            asm!(
                "lea 2f(%rip), {after}",
                "pushfq",
                "orq ${tf}, (%rsp)",
                "popfq",
                $insn,
                "2:",
                after = out(reg) after,
                tf = const TF,
                $($($operands)+,)?
                options(att_syntax),
            )
        };
        after
    }};
}

pub fn debugreg() {
    let mut r = Results::new("debugreg");
    let old: [_; 3] =
        [GP, UD, DB].map(|v| (v, traps::set_handler(v, Some(if v == DB { on_debug } else { catch }))));

    // set_debugreg/get_debugreg: Xen's validation.
    r.ret("set.dr0", set_debugreg(0, 0x1000), 0);
    r.eq("get.dr0", get_debugreg(0) as u64, 0x1000);
    r.ret("set.dr1.hypervisor", set_debugreg(1, 0xffff_8000_0000_0000), EPERM);
    r.ret("set.dr1.noncanonical", set_debugreg(1, 1 << 47), EPERM);
    r.ret("set.dr1.kernel", set_debugreg(1, 0xffff_ffff_8000_0000), 0);
    r.ret("set.dr6.upper", set_debugreg(6, 1 << 32), EINVAL);
    r.ret("set.dr6", set_debugreg(6, 0), 0);
    r.eq("get.dr6", get_debugreg(6) as u64, DR6_DEFAULT);
    r.ret("set.dr7.upper", set_debugreg(7, 1 << 32), EINVAL);
    r.ret("set.dr7.general_detect", set_debugreg(7, 1 << 13), EPERM);
    r.ret("set.dr7.io_without_de", set_debugreg(7, dr7_local(0) | dr7_control(0, RW_IO, LEN_1)), EPERM);
    r.ret("set.dr7.reserved", set_debugreg(7, 0xd800), 0);
    r.eq("get.dr7.reserved", get_debugreg(7) as u64, DR7_DEFAULT);
    r.ret("set.dr8", set_debugreg(8, 0), ENODEV);
    r.ret("get.dr8", get_debugreg(8), ENODEV);
    r.eq("get.dr4.alias", get_debugreg(4) as u64, DR6_DEFAULT);
    r.eq("get.dr5.alias", get_debugreg(5) as u64, DR7_DEFAULT);
    r.ret("set.dr0.high_reg_bits", set_debugreg(1 << 32, 0x2000), 0);
    r.eq("get.dr0.high_reg_bits", get_debugreg(0) as u64, 0x2000);

    // mov to and from the debug registers (emulated for the guest kernel).
    let mut v: u64 = 0x3000;
    r.word("mov.to.dr2", outcome(|| recoverable!("mov {v}, %dr2", v = in(reg) v)), "done");
    r.word("mov.from.dr2", outcome(|| recoverable!("mov %dr2, {v}", v = inout(reg) v)), "done");
    r.eq("mov.from.dr2.value", v, 0x3000);
    r.word(
        "mov.to.dr1.hypervisor",
        outcome(|| recoverable!("mov {v}, %dr1", v = in(reg) 0xffff_8000_0000_1000u64)),
        "#GP0",
    );
    r.word(
        "mov.to.dr7.general_detect",
        outcome(|| recoverable!("mov {v}, %dr7", v = in(reg) 1u64 << 13)),
        "#GP0",
    );

    // CR4: the guest's bits read back, the rest ignored; DE makes DR4/DR5 #UD.
    let cr4 = read_cr4();
    r.eq("cr4.initial", cr4, CR4_VISIBLE);
    r.word("cr4.write_de", write_cr4(cr4 | CR4_DE), "done");
    r.eq("cr4.with_de", read_cr4(), CR4_VISIBLE | CR4_DE);
    r.word("cr4.write_pge_ignored", write_cr4(cr4 | CR4_DE | (1 << 7)), "done");
    r.eq("cr4.pge_ignored", read_cr4(), CR4_VISIBLE | CR4_DE);
    r.ret("de.get.dr4", get_debugreg(4), ENODEV);
    r.ret("de.set.dr5", set_debugreg(5, 0), ENODEV);
    r.word("de.mov.from.dr4", outcome(|| recoverable!("mov %dr4, {v}", v = out(reg) _)), "#UD");

    // An I/O breakpoint (only with DE): never armed in the CPU, matched by the emulator.
    let io_dr7 = dr7_local(3) | dr7_control(3, RW_IO, LEN_1);
    r.ret("io_bp.set.dr3", set_debugreg(3, 0x80), 0);
    r.ret("io_bp.set.dr7", set_debugreg(7, io_dr7), 0);
    r.eq("io_bp.get.dr7", get_debugreg(7) as u64, DR7_DEFAULT | io_dr7);
    r.ret("io_bp.set_iopl", set_iopl(1), 0);
    let mut after_out = 0;
    let (n, rip, dr6) = debug_events(|| {
        // SAFETY: emulated port output (virtual IOPL 1) to port 0x80, which has no effect.
        unsafe {
            asm!("lea 2f(%rip), {a}", "outb %al, $0x80", "2:", a = out(reg) after_out, in("al") 0u8,
                options(att_syntax, nostack))
        };
    });
    r.eq("io_bp.out.events", n, 1);
    r.is("io_bp.out.rip_after", rip == after_out);
    r.eq("io_bp.out.dr6", dr6 & 0xf, 1 << 3);
    r.ret("io_bp.clear", set_debugreg(7, 0), 0);
    r.ret("io_bp.iopl_back", set_iopl(0), 0);
    r.word("cr4.write_back", write_cr4(cr4), "done");
    r.eq("cr4.back", read_cr4(), CR4_VISIBLE);
    r.eq("no_de.get.dr4", get_debugreg(4) as u64, DR6_DEFAULT);

    // An instruction breakpoint: a fault at the target, resumed past with RF.
    let target = tg_exec_target as *const () as u64;
    set_debugreg(0, target);
    set_debugreg(7, dr7_local(0) | dr7_control(0, RW_EXEC, LEN_1));
    // SAFETY: a function of ours that does nothing.
    let (n, rip, dr6) = debug_events(|| unsafe { tg_exec_target() });
    set_debugreg(7, 0);
    r.eq("exec_bp.events", n, 1);
    r.is("exec_bp.rip_is_target", rip == target);
    r.eq("exec_bp.dr6", dr6, DR6_DEFAULT | 1);

    // A data breakpoint: a trap after the write.
    set_debugreg(1, WATCHED.as_ptr() as u64);
    set_debugreg(7, dr7_local(1) | dr7_control(1, RW_WRITE, LEN_8));
    let (n, _, dr6) = debug_events(|| WATCHED.store(5, Ordering::SeqCst));
    set_debugreg(7, 0);
    r.eq("data_bp.events", n, 1);
    r.eq("data_bp.dr6", dr6, DR6_DEFAULT | (1 << 1));
    // Disarmed: no more events.
    let (n, _, _) = debug_events(|| WATCHED.store(6, Ordering::SeqCst));
    r.eq("data_bp.disarmed.events", n, 0);

    // Single steps: over a plain instruction and over one the hypervisor emulates.
    let mut after = 0;
    let (n, rip, dr6) = debug_events(|| after = single_step!("nop"));
    r.eq("step.plain.events", n, 1);
    r.is("step.plain.rip_after", rip == after);
    r.eq("step.plain.dr6", dr6, DR6_DEFAULT | DR6_BS);
    let (n, rip, dr6) =
        debug_events(|| after = single_step!("rdmsr", in("ecx") MSR_FS_BASE, out("eax") _, out("edx") _));
    r.eq("step.emulated.events", n, 1);
    r.is("step.emulated.rip_after", rip == after);
    r.eq("step.emulated.dr6", dr6, DR6_DEFAULT | DR6_BS);

    // CR4.TSD: the kernel's rdtsc faults and is emulated, and still counts.
    r.word("cr4.write_tsd", write_cr4(cr4 | CR4_TSD), "done");
    r.eq("cr4.with_tsd", read_cr4(), CR4_VISIBLE | CR4_TSD);
    let t0 = rdtsc();
    let t1 = rdtsc();
    r.is("tsd.rdtsc_counts", t1 > t0 && t0 != 0);
    // rdtscp is emulated too, with the vCPU's TSC_AUX in %ecx.
    let _ = wrmsr(MSR_TSC_AUX, 0x77);
    let aux: u32;
    // SAFETY: reads the TSC and TSC_AUX (emulated under CR4.TSD).
    unsafe { asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux, options(nostack, nomem)) };
    r.eq("tsd.rdtscp_aux", u64::from(aux), 0x77);
    r.word("cr4.write_back#2", write_cr4(cr4), "done");
    // rdpid (never trapped) reads the same TSC_AUX, where the CPU has it.
    if cpuid(7)[2] & CPUID7_ECX_RDPID != 0 {
        let pid: u64;
        // SAFETY: reads TSC_AUX.
        unsafe { asm!("rdpid {}", out(reg) pid, options(nostack, nomem)) };
        r.eq("rdpid", pid, 0x77);
    } else {
        super::results::emit("rdpid", super::results::Value::Word("absent"));
    }
    let _ = wrmsr(MSR_TSC_AUX, 0);

    // XSA-260: `mov %ss` from a watched word defers the #DB past the next instruction; that
    // instruction is a hypercall, so the #DB may arrive in the hypervisor on the guest's stack
    // pointer. The hypervisor must survive it (the #DB count is recorded, not asserted: it
    // depends on how the CPU defers).
    let ss: u64;
    // SAFETY: reads the stack selector.
    unsafe { asm!("mov %ss, {0:x}", out(reg) ss, options(att_syntax, nomem, nostack)) };
    SS_WORD.store(ss, Ordering::SeqCst);
    set_debugreg(2, SS_WORD.as_ptr() as u64);
    set_debugreg(7, dr7_local(2) | dr7_control(2, RW_READ_WRITE, LEN_2));
    let mut version: u64 = nr::XEN_VERSION;
    let (n, _, _) = debug_events(|| {
        // SAFETY: reloads the current %ss from the watched copy, then issues xen_version(0)
        // with `syscall` as the hypercall page does (rcx and r11 are clobbered).
        unsafe {
            asm!("mov ({w}), %ss", "syscall", w = in(reg) SS_WORD.as_ptr(), inout("rax") version,
                in("rdi") 0u64, out("rcx") _, out("r11") _, options(att_syntax, nostack))
        };
    });
    set_debugreg(7, 0);
    super::results::emit("movss_syscall.guest_events", super::results::Value::Int(n as i64));
    r.is("movss_syscall.returned_the_version", version == hypercall::xen_version(0, 0) as u64);

    // Everything off again.
    r.ret("reset.dr7", set_debugreg(7, 0), 0);
    r.eq("reset.get.dr7", get_debugreg(7) as u64, DR7_DEFAULT);
    for (v, h) in old {
        traps::set_handler(v, h);
    }
    r.report();
}

const MSR_TSC_AUX: u32 = 0xc000_0103;
const CPUID7_ECX_RDPID: u32 = 1 << 22;
const CPUID7_EBX_FSGSBASE: u32 = 1 << 0;
const CR4_FSGSBASE: u64 = 1 << 16;

fn wrmsr(msr: u32, v: u64) -> &'static str {
    outcome(|| recoverable!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32))
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter (emulated while the guest's CR4.TSD is set).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn cli() -> &'static str {
    outcome(|| recoverable!("cli"))
}

fn sti() -> &'static str {
    outcome(|| recoverable!("sti"))
}

/// `inb $0x21` (the PIC's mask: no domain has rights to it).
fn in_pic() -> (&'static str, u64) {
    let mut v: u64 = 0;
    let o = outcome(|| recoverable!("inb $0x21, %al", inout("rax") v));
    (o, v)
}

fn in_port(port: u16, bytes: u32) -> u64 {
    let mut v: u64 = 0;
    let _ = match bytes {
        1 => outcome(|| recoverable!("inb %dx, %al", in("dx") port, inout("rax") v)),
        2 => outcome(|| recoverable!("inw %dx, %ax", in("dx") port, inout("rax") v)),
        _ => outcome(|| recoverable!("inl %dx, %eax", in("dx") port, inout("rax") v)),
    };
    v
}

fn out_port(port: u16, bytes: u32, v: u32) -> &'static str {
    match bytes {
        1 => outcome(|| recoverable!("outb %al, %dx", in("dx") port, in("eax") v)),
        2 => outcome(|| recoverable!("outw %ax, %dx", in("dx") port, in("eax") v)),
        _ => outcome(|| recoverable!("outl %eax, %dx", in("dx") port, in("eax") v)),
    }
}

fn vm_assist(cmd: u32, ty: u32) -> i64 {
    hypercall::hypercall5(nr::VM_ASSIST, u64::from(cmd), u64::from(ty), 0, 0, 0)
}

pub fn iopl() {
    let mut r = Results::new("iopl");
    let old = traps::set_handler(GP, Some(catch));

    // Virtual IOPL 0 (the initial one): the kernel (ring 1 for IOPL) may not.
    r.word("iopl0.cli", cli(), "#GP0");
    r.word("iopl0.sti", sti(), "#GP0");
    r.word("iopl0.in", in_pic().0, "#GP0");
    r.word("iopl0.out", out_port(0x70, 1, 0), "#GP0");
    r.ret("set_iopl.4", set_iopl(4), EINVAL);
    r.ret("set_iopl.1", set_iopl(1), 0);

    // IOPL 1, as Linux sets it: cli and sti complete (as no-ops), ports are emulated.
    r.word("iopl1.cli", cli(), "done");
    r.word("iopl1.sti", sti(), "done");
    let (o, v) = in_pic();
    r.word("iopl1.in", o, "done");
    r.eq("iopl1.in.value", v & 0xff, 0xff);
    r.eq("iopl1.inw.value", in_port(0xa0, 2) & 0xffff, 0xffff);
    r.word("iopl1.out.rtc_index", out_port(0x70, 1, 0x0b), "done");
    r.eq("iopl1.in.rtc_index", in_port(0x70, 1) & 0xff, 0x0b);
    r.word("iopl1.out.cf8", out_port(0xcf8, 4, 0x8000_1234), "done");
    r.eq("iopl1.in.cf8", in_port(0xcf8, 4), 0x8000_1234);
    let _ = out_port(0xcf8, 4, 0);
    r.ret("set_iopl.3", set_iopl(3), 0);
    r.word("iopl3.cli", cli(), "done");

    // Back to 0: refused again.
    r.ret("set_iopl.0", set_iopl(0), 0);
    r.word("iopl0_again.cli", cli(), "#GP0");
    r.word("iopl0_again.in", in_pic().0, "#GP0");

    // VMASST_TYPE_architectural_iopl: the kernel counts as ring 0, so IOPL 0 lets it.
    r.ret("vmasst.architectural_iopl.on", vm_assist(vmasst::CMD_ENABLE, vmasst::TYPE_ARCHITECTURAL_IOPL), 0);
    r.word("architectural.iopl0.cli", cli(), "done");
    r.ret(
        "vmasst.architectural_iopl.off",
        vm_assist(vmasst::CMD_DISABLE, vmasst::TYPE_ARCHITECTURAL_IOPL),
        0,
    );
    r.word("architectural_off.cli", cli(), "#GP0");

    traps::set_handler(GP, old);
    r.report();
}

/// Read through `%fs`/`%gs` while their bases point at it.
static SEG_WORD: AtomicU64 = AtomicU64::new(0x5eed_0001);
const MSR_GS_BASE: u32 = 0xc000_0101;

fn set_segment_base(which: u32, base: u64) -> i64 {
    hypercall::hypercall5(nr::SET_SEGMENT_BASE, u64::from(which), base, 0, 0, 0)
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: emulated for the guest kernel (the MSRs read here are ones Xen emulates).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Loads the null selector into `%fs` or `%gs`: the CPU zeroes that base, with no hypercall.
fn load_null(gs: bool) {
    // SAFETY: a null data selector is always loadable; nothing here uses %fs or %gs.
    unsafe {
        if gs {
            asm!("mov {0:x}, %gs", in(reg) 0u64, options(att_syntax, nostack, nomem));
        } else {
            asm!("mov {0:x}, %fs", in(reg) 0u64, options(att_syntax, nostack, nomem));
        }
    }
}

fn read_through(gs: bool) -> u64 {
    let v: u64;
    // SAFETY: the base points at SEG_WORD (checked by the caller's set_segment_base).
    unsafe {
        if gs {
            asm!("mov %gs:0, {}", out(reg) v, options(att_syntax, nostack, readonly));
        } else {
            asm!("mov %fs:0, {}", out(reg) v, options(att_syntax, nostack, readonly));
        }
    }
    v
}

/// `segbase`: the CPU's `%fs`/`%gs` bases are the truth while the guest runs. A guest that
/// loads a null selector zeroes a base without a hypercall; `set_segment_base` with the value
/// the hypervisor last gave must still reach the CPU (Linux's `load_percpu_segment` does
/// exactly this), and the emulated `rdmsr` reads what the CPU has.
pub fn segbase() {
    let mut r = Results::new("segbase");
    let old = [GP, UD].map(|v| (v, traps::set_handler(v, Some(catch))));
    let word = SEG_WORD.as_ptr() as u64;
    let gs0 = rdmsr(MSR_GS_BASE);
    let fs0 = rdmsr(MSR_FS_BASE);
    for (name, which, gs) in [("gs", segbase::GS_KERNEL, true), ("fs", segbase::FS, false)] {
        r.ret(&format!("{name}.set"), set_segment_base(which, word), 0);
        r.eq(&format!("{name}.read"), read_through(gs), 0x5eed_0001);
        load_null(gs);
        r.ret(&format!("{name}.set_again"), set_segment_base(which, word), 0);
        r.eq(&format!("{name}.read_after_set_again"), read_through(gs), 0x5eed_0001);
        // And once more after a hypercall that changes nothing: the base stays in the CPU.
        let _ = hypercall::xen_version(0, 0);
        r.eq(&format!("{name}.read_after_hypercall"), read_through(gs), 0x5eed_0001);
        // The emulated rdmsr reads the CPU's base, not the hypervisor's copy.
        load_null(gs);
        let msr = if gs { MSR_GS_BASE } else { MSR_FS_BASE };
        r.eq(&format!("{name}.rdmsr_after_null_selector"), rdmsr(msr), 0);
    }
    // With CR4.FSGSBASE (where CPUID offers it) the guest writes its bases itself.
    if cpuid(7)[1] & CPUID7_EBX_FSGSBASE != 0 {
        let cr4 = read_cr4();
        r.word("fsgsbase.cr4_write", write_cr4(cr4 | CR4_FSGSBASE), "done");
        r.eq("fsgsbase.cr4_read", read_cr4() & CR4_FSGSBASE, CR4_FSGSBASE);
        r.word("fsgsbase.wrgsbase", outcome(|| recoverable!("wrgsbase {w}", w = in(reg) word)), "done");
        r.eq("fsgsbase.read", read_through(true), 0x5eed_0001);
        r.eq("fsgsbase.rdmsr", rdmsr(MSR_GS_BASE), word);
        let _ = hypercall::xen_version(0, 0);
        r.eq("fsgsbase.read_after_hypercall", read_through(true), 0x5eed_0001);
        let mut got: u64 = 0;
        r.word("fsgsbase.rdgsbase", outcome(|| recoverable!("rdgsbase {g}", g = inout(reg) got)), "done");
        r.eq("fsgsbase.rdgsbase.value", got, word);
        r.word("fsgsbase.cr4_clear", write_cr4(cr4), "done");
        r.word("fsgsbase.rdgsbase_without", outcome(|| recoverable!("rdgsbase {g}", g = out(reg) _)), "#UD");
    } else {
        super::results::emit("fsgsbase", super::results::Value::Word("absent"));
    }
    let _ = set_segment_base(segbase::GS_KERNEL, gs0);
    let _ = set_segment_base(segbase::FS, fs0);
    for (v, h) in old {
        traps::set_handler(v, h);
    }
    r.report();
}

static PF_SEEN: AtomicU64 = AtomicU64::new(0);

/// A #PF at the `iretq` of [`iret_to_self`]: recorded, and resumed after it with its frame
/// dropped.
fn pf_at_iret(f: &mut TrapFrame) {
    if f.rip != super::traps::FAULT_RIP.load(Ordering::SeqCst) {
        traps::fatal(f);
    }
    PF_SEEN.fetch_add(1, Ordering::SeqCst);
    f.rip = super::traps::RESUME_RIP.load(Ordering::SeqCst);
    f.rsp += 5 * 8;
}

/// `iret-to-self`: the guest kernel returns to itself with `iretq` on its own stack, as
/// Linux's `iret_to_self` does at boot. Under QEMU 7.2's TCG with SMAP on, that `iretq` reads
/// its (user-page) stack as a supervisor access and faults; microvisor recognises the quirk
/// and turns SMAP off (one `smap-quirk` line), so the guest never sees it. Xen 4.17 on the
/// same QEMU passes the #PF to the guest (it needs `smap=0`): a listed difference.
pub fn iret_to_self() {
    let mut r = Results::new("iret-to-self");
    let old = traps::set_handler(14, Some(pf_at_iret));
    for round in ["first", "again"] {
        let before = PF_SEEN.load(Ordering::SeqCst);
        // SAFETY: builds an iret frame that returns to label 2 with the current stack, flags
        // and selectors; a #PF at the iretq is resumed at label 2 with the frame dropped.
        unsafe {
            asm!(
                "lea 2f(%rip), {t}",
                "mov {t}, ({resume})",
                "lea 1f(%rip), {t}",
                "mov {t}, ({fault})",
                "mov %rsp, {t}",
                "mov %ss, {s:e}",
                "push {s}",
                "push {t}",
                "pushfq",
                "mov %cs, {s:e}",
                "push {s}",
                "lea 2f(%rip), {s}",
                "push {s}",
                "1: iretq",
                "2:",
                t = out(reg) _,
                s = out(reg) _,
                resume = in(reg) super::traps::RESUME_RIP.as_ptr(),
                fault = in(reg) super::traps::FAULT_RIP.as_ptr(),
                options(att_syntax),
            )
        };
        let faulted = PF_SEEN.load(Ordering::SeqCst) != before;
        r.word(&format!("{round}.iretq"), if faulted { "#PF" } else { "done" }, "done");
    }
    traps::set_handler(14, old);
    r.report();
}

/// Where the `ptwr` scenario maps its test page.
const PTWR_VA: u64 = 0x70_0000;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
/// Set by the hypervisor on guest mappings (Xen's `adjust_guest_l1e`), not by the guest.
const PTE_GLOBAL: u64 = 1 << 8;

/// The L1 entry for `PTWR_VA` as the guest wrote it: without the bits the CPU and the
/// hypervisor set.
fn ptwr_entry(l1: hypercall_abi::Mfn, idx: usize) -> u64 {
    pv_guest_kernel::mm::read_table(l1, idx).unwrap_or(u64::MAX) & !(PTE_ACCESSED | PTE_DIRTY | PTE_GLOBAL)
}

/// `ptwr`: writable page tables. The guest kernel writes an entry of one of its own L1
/// tables with ordinary instructions through the table's read-only mapping (as Linux's
/// `set_pte`, `ptep_get_and_clear`, `ptep_test_and_clear_young` do): each store is emulated
/// and validated as `mmu_update` would validate it, and one `mmu_update` refuses is the
/// guest's page fault with the entry unchanged.
pub fn ptwr() {
    use pv_guest_kernel::mm::{self, pt};
    let mut r = Results::new("ptwr");
    let old = [GP, 14].map(|v| (v, traps::set_handler(v, Some(catch))));
    let setup = (|| {
        let page = mm::alloc_page().ok()?;
        let maddr = mm::entry_maddr(PTWR_VA, 1).ok()?;
        let l1 = hypercall_abi::Mfn(maddr >> 12);
        let entry_va = mm::pfn_to_virt(mm::mfn_to_pfn(l1)?)? + (maddr & 0xfff);
        Some((page, l1, (maddr & 0xfff) as usize / 8, entry_va))
    })();
    let Some((page, l1, idx, entry_va)) = setup else {
        r.fail("cannot set up the test page and its L1".into());
        return r.report();
    };
    // SAFETY: our page, writable in the direct map.
    unsafe { (page.va as *mut u64).write_volatile(0x7077_0001) };
    let ro = (page.mfn.0 << 12) | pt::PAGE_KERNEL_RO;
    let mov = |v: u64| outcome(|| recoverable!("movq {v}, ({p})", v = in(reg) v, p = in(reg) entry_va));
    let read_mapped = || -> u64 {
        // SAFETY: PTWR_VA maps our page (checked by the caller through the entry).
        unsafe { (PTWR_VA as *const u64).read_volatile() }
    };

    // Xen 4.17 emulates these stores for a 64-bit PV kernel whatever the
    // VMASST_TYPE_writable_pagetables setting (Linux enables it; the call succeeds).
    r.ret("vmasst.on", vm_assist(vmasst::CMD_ENABLE, vmasst::TYPE_WRITABLE_PAGETABLES), 0);

    // mov: a new read-only mapping of our page, which then reads through.
    r.word("mov", mov(ro), "done");
    r.is("mov.entry_is_the_one_written", ptwr_entry(l1, idx) == ro & !(PTE_ACCESSED | PTE_DIRTY));
    r.eq("mov.reads_through", read_mapped(), 0x7077_0001);
    // lock btrq $5: test-and-clear of the accessed bit (CF is its old value).
    let mut cf: u64 = 0;
    r.word(
        "btr",
        outcome(|| recoverable!("lock btrq $5, ({p})\n setc {f:l}", p = in(reg) entry_va, f = inout(reg) cf)),
        "done",
    );
    r.eq("btr.cf", cf & 1, 1);
    r.eq("btr.accessed", pv_guest_kernel::mm::read_table(l1, idx).unwrap_or(0) & PTE_ACCESSED, 0);
    // Refused like mmu_update: a writable mapping of a page table. The entry stays as it was
    // and the guest gets its page fault.
    let before = ptwr_entry(l1, idx);
    r.word("refused.writable_l1", mov((l1.0 << 12) | pt::PAGE_KERNEL), "#PF");
    r.is("refused.entry_unchanged", ptwr_entry(l1, idx) == before);
    // lock cmpxchg: a stale expected value stores nothing and loads the current entry.
    let cur = pv_guest_kernel::mm::read_table(l1, idx).unwrap_or(0);
    let (mut acc, mut zf) = (cur ^ 1, 0u64);
    r.word(
        "cmpxchg.stale",
        outcome(|| {
            recoverable!("lock cmpxchgq {n}, ({p})\n setz {f:l}", n = in(reg) 0u64, p = in(reg) entry_va,
                f = inout(reg) zf, inout("rax") acc)
        }),
        "done",
    );
    r.eq("cmpxchg.stale.zf", zf & 1, 0);
    r.is("cmpxchg.stale.loaded_current", acc == cur);
    r.is("cmpxchg.stale.entry_unchanged", ptwr_entry(l1, idx) == before);
    // xchg with 0 (ptep_get_and_clear): the old entry comes back, the mapping goes.
    let mut got: u64 = 0;
    r.word(
        "xchg",
        outcome(|| recoverable!("xchgq {g}, ({p})", g = inout(reg) got, p = in(reg) entry_va)),
        "done",
    );
    r.is("xchg.returned_the_entry", got & !(PTE_ACCESSED | PTE_DIRTY | PTE_GLOBAL) == before);
    r.eq("xchg.entry", ptwr_entry(l1, idx), 0);
    let flush = [hypercall_abi::xen::MmuextOp {
        cmd: hypercall_abi::xen::mmuext::TLB_FLUSH_LOCAL,
        ..Default::default()
    }];
    let mut ok = 0u32;
    let _ = hypercall::mmuext_op(&flush, &mut ok, hypercall_abi::DomId::SELF);
    r.ret("vmasst.off", vm_assist(vmasst::CMD_DISABLE, vmasst::TYPE_WRITABLE_PAGETABLES), 0);
    r.word("after_off.mov", mov(ro), "done");
    // A frame this domU does not own (under Xen the guest is dom0, which may map any frame no
    // domain owns: a listed difference).
    r.word("refused.foreign", mov(0xf_ffff_f000 | pt::PAGE_KERNEL_RO), "#PF");
    let _ = mov(0);
    let _ = hypercall::mmuext_op(&flush, &mut ok, hypercall_abi::DomId::SELF);
    for (v, h) in old {
        traps::set_handler(v, h);
    }
    r.report();
}
