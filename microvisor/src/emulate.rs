//! Privileged-instruction emulation for PV kernels (Xen's `pv/emul-priv-op.c`): a guest
//! kernel runs in ring 3, so `rdmsr`, `wrmsr`, `mov` to or from a control or debug register,
//! `clts`, `wbinvd`/`invd`, `lmsw`, `cli`/`sti` and port I/O raise #GP(0) (`rdtsc`/`rdtscp`
//! too while the guest has CR4.TSD), and the hypervisor carries them out on the vCPU's
//! virtual state as Xen does. `cli`, `sti` and port I/O are judged by the virtual IOPL, in
//! guest user mode as well; everything else only for the guest kernel (Xen's `mode_ring0`).
//! The instruction is decoded with `iced-x86` (a maintained, fuzzed `no_std` decoder:
//! prefixes, REX and ModRM forms are its job, not ours). What Xen refuses gets the exception
//! Xen gives; the RIP is advanced only after success, a single-stepping guest then gets its
//! #DB, and `traps::check_return_rip` keeps any result off the non-canonical range.

use crate::cpu_state::{self, Cr4Policy};
use crate::hv::Hypervisor;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::vcpu::GuestFrame;
use crate::x86::{apic_base, cr0, dr, efer, misc_enable, msr, rflags};
use hypercall_abi::xen::is_canonical;
use hypercall_abi::Errno;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

/// The CR0 a PV kernel reads (TS is its virtual one).
pub const GUEST_CR0: u64 = cr0::PG | cr0::AM | cr0::WP | cr0::NE | cr0::ET | cr0::MP | cr0::PE;
/// Xen 4.17's PAT (`XEN_MSR_PAT`: WB, WT, UC-, UC, WC, WP, UC, UC, Linux's own layout), what
/// a PV guest reads.
pub const XEN_MSR_PAT: u64 = 0x0000_0501_0007_0406;
/// MSR numbers in the hypervisor leaves (0x4000_xxxx): never faked as 0 (Xen's
/// `(reg >> 16) != 0x4000`).
const HYPERVISOR_MSR_BLOCK: u32 = 0x4000;

/// `MSR_IA32_MISC_ENABLE` as Xen shows the host's `host` to a PV guest: no performance
/// monitoring, BTS or PEBS, no MONITOR/MWAIT, xTPR messages disabled.
pub fn guest_misc_enable(host: u64) -> u64 {
    use misc_enable::*;
    (host & !(PERF_AVAIL | MONITOR_ENABLE)) | BTS_UNAVAIL | PEBS_UNAVAIL | XTPR_DISABLE
}

/// Longest x86 instruction.
const MAX_INSN: usize = 15;

/// How an emulated instruction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the RIP moves past the instruction.
    Done,
    /// Done, and it hit these breakpoints (DR6 bits: a single step or I/O breakpoints): the
    /// guest gets #DB after it.
    DoneDebug(u64),
    /// Xen refuses it: the guest gets #GP(0) at the instruction.
    Gp,
    /// Not an instruction here (a debug register that does not exist): #UD at it.
    Ud,
}

/// Fetches the instruction bytes at `rip` (as many of the 15 as are readable).
pub fn fetch<P: Platform>(hv: &Hypervisor<P>, rip: u64) -> ([u8; MAX_INSN], usize) {
    let mut bytes = [0u8; MAX_INSN];
    let space = hv.guest();
    let mut n = 0;
    while n < MAX_INSN && space.read(rip.wrapping_add(n as u64), &mut bytes[n..n + 1]).is_ok() {
        n += 1;
    }
    (bytes, n)
}

/// Decodes the instruction in `bytes` (64-bit code at `rip`).
pub fn decode(bytes: &[u8], rip: u64) -> Option<Instruction> {
    let insn = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
    (!insn.is_invalid()).then_some(insn)
}

/// Emulates the privileged instruction at the frame's RIP, which raised #GP(0) in guest
/// kernel or user mode. `None`: not one Xen emulates (the guest gets the #GP).
pub fn privileged_op<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Option<Outcome> {
    let (bytes, n) = fetch(hv, frame.rip);
    let insn = decode(&bytes[..n], frame.rip)?;
    let kernel = hv.cur_vcpu().kernel_mode;
    let outcome = match insn.code() {
        // Judged by the virtual IOPL in either mode. Xen completes `cli`/`sti` as no-ops (the
        // guest masks events through vcpu_info, and a `popf` could never undo a real `cli`).
        Code::Cli | Code::Sti => {
            if iopl_ok(hv) {
                Outcome::Done
            } else {
                Outcome::Gp
            }
        }
        code if port_io(code).is_some() => {
            let (dir, width, port_in_dx) = port_io(code)?;
            let port = if port_in_dx { frame.rdx as u16 } else { u16::from(insn.immediate8()) };
            io(hv, frame, dir, port, width)
        }
        // Everything else only for the guest kernel (`mode_ring0` in Xen's emulator).
        _ if !kernel => return None,
        Code::Rdmsr => rdmsr(hv, frame),
        Code::Wrmsr => wrmsr(hv, frame),
        Code::Mov_r64_cr => {
            let v = read_cr(hv, insn.op1_register())?;
            set_reg(frame, insn.op0_register(), v);
            Outcome::Done
        }
        Code::Mov_cr_r64 => write_cr(hv, insn.op0_register(), reg(frame, insn.op1_register())?)?,
        Code::Mov_r64_dr => {
            match cpu_state::get_debugreg(&hv.cur_vcpu().arch, dr_index(insn.op1_register())?) {
                Ok(v) => {
                    set_reg(frame, insn.op0_register(), v);
                    Outcome::Done
                }
                Err(e) => dr_fault(e),
            }
        }
        Code::Mov_dr_r64 => {
            let (n, v) = (dr_index(insn.op0_register())?, reg(frame, insn.op1_register())?);
            match set_debugreg(hv, n, v) {
                Ok(()) => Outcome::Done,
                Err(e) => dr_fault(e),
            }
        }
        // With the guest's CR4.TSD its kernel's `rdtsc` and `rdtscp` fault and are emulated.
        Code::Rdtsc | Code::Rdtscp => {
            let tsc = hv.plat.tsc();
            frame.rax = tsc & 0xffff_ffff;
            frame.rdx = tsc >> 32;
            if insn.code() == Code::Rdtscp {
                frame.rcx = u64::from(hv.cur_vcpu().arch.tsc_aux);
            }
            Outcome::Done
        }
        Code::Clts => {
            set_ts(hv, false);
            Outcome::Done
        }
        // Caches are the hypervisor's business; Xen lets a PV guest without cache-flush
        // rights believe it flushed.
        Code::Wbinvd | Code::Invd => Outcome::Done,
        Code::Lmsw_rm16 if insn.op0_register() != Register::None => {
            // lmsw loads CR0[3:0] (it cannot clear PE): only TS may actually change.
            let cur = read_cr(hv, Register::CR0)?;
            let new = (cur & !0xe) | (reg(frame, insn.op0_register())? & 0xf);
            write_cr(hv, Register::CR0, new)?
        }
        _ => return None,
    };
    let outcome = match outcome {
        Outcome::Done | Outcome::DoneDebug(_) => {
            frame.rip = frame.rip.wrapping_add(insn.len() as u64);
            // A single-stepping guest traps after the instruction, as it would have natively.
            let hits = match outcome {
                Outcome::DoneDebug(h) => h,
                _ => 0,
            } | if frame.rflags & rflags::TF != 0 { dr::DR6_BS } else { 0 };
            if hits != 0 {
                let d = &mut hv.cur_vcpu_mut().arch.debug;
                d.dr6 |= hits | dr::DR6_DEFAULT;
                Outcome::DoneDebug(hits)
            } else {
                Outcome::Done
            }
        }
        o => o,
    };
    Some(outcome)
}

/// Xen's `iopl_ok` for the running vCPU.
fn iopl_ok<P: Platform>(hv: &Hypervisor<P>) -> bool {
    let architectural = crate::traps::architectural_iopl(hv);
    cpu_state::iopl_ok(&hv.cur_vcpu().arch, hv.cur_vcpu().kernel_mode, architectural)
}

/// Direction of a port access.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

/// `in`/`out` forms: direction, width in bytes, and whether the port is in `%dx` (else an
/// immediate). The string forms (`ins`/`outs`) are not emulated (see ARCHITECTURE.md).
fn port_io(code: Code) -> Option<(Dir, u32, bool)> {
    Some(match code {
        Code::In_AL_imm8 => (Dir::In, 1, false),
        Code::In_AX_imm8 => (Dir::In, 2, false),
        Code::In_EAX_imm8 => (Dir::In, 4, false),
        Code::In_AL_DX => (Dir::In, 1, true),
        Code::In_AX_DX => (Dir::In, 2, true),
        Code::In_EAX_DX => (Dir::In, 4, true),
        Code::Out_imm8_AL => (Dir::Out, 1, false),
        Code::Out_imm8_AX => (Dir::Out, 2, false),
        Code::Out_imm8_EAX => (Dir::Out, 4, false),
        Code::Out_DX_AL => (Dir::Out, 1, true),
        Code::Out_DX_AX => (Dir::Out, 2, true),
        Code::Out_DX_EAX => (Dir::Out, 4, true),
        _ => return None,
    })
}

/// A port access that faulted: the CPU's I/O bitmap (dom0's) did not allow it, so the domain
/// has no rights to that port. With the virtual IOPL it completes as Xen completes it for such
/// a port (see `cpu_state::IoLatches`); without, #GP(0).
fn io<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &mut GuestFrame,
    dir: Dir,
    port: u16,
    width: u32,
) -> Outcome {
    if !iopl_ok(hv) {
        return Outcome::Gp;
    }
    let mask = u64::from(u32::MAX >> (32 - 8 * width));
    match dir {
        Dir::In => {
            let v = u64::from(hv.cur_dom().io.read(port, width));
            // 8- and 16-bit reads keep the rest of %rax; a 32-bit one zero-extends.
            frame.rax = if width == 4 { v } else { (frame.rax & !mask) | (v & mask) };
        }
        Dir::Out => hv.cur_dom_mut().io.write(port, width, (frame.rax & mask) as u32),
    }
    match cpu_state::io_breakpoints(&hv.cur_vcpu().arch, port, u64::from(width)) {
        0 => Outcome::Done,
        hits => Outcome::DoneDebug(hits),
    }
}

/// The debug register a `mov` names.
fn dr_index(r: Register) -> Option<u64> {
    let n = r as u32;
    (Register::DR0 as u32..=Register::DR15 as u32).contains(&n).then(|| u64::from(n - Register::DR0 as u32))
}

/// The exception a refused debug-register access gets (Xen's `x86emul_write_dr`).
fn dr_fault(e: Errno) -> Outcome {
    if e == Errno::ENODEV {
        Outcome::Ud
    } else {
        Outcome::Gp
    }
}

/// `set_debugreg` on the running vCPU (the hypercall and `mov %reg, %drN`).
pub fn set_debugreg<P: Platform>(hv: &mut Hypervisor<P>, reg: u64, value: u64) -> Result<(), Errno> {
    cpu_state::set_debugreg(&mut hv.cur_vcpu_mut().arch, reg, value)?;
    hv.mark_hw_dirty();
    Ok(())
}

/// The CR4 rules of the running domain's CPUID.
fn cr4_policy<P: Platform>(hv: &Hypervisor<P>) -> Cr4Policy {
    let leaf = |l: u32| crate::cpuid::pv_cpuid(l, hv.plat.cpuid(l, 0));
    Cr4Policy::from_cpuid(leaf(1), leaf(7))
}

/// The x86 register number of a 64-bit or 16-bit general register (the forms `mov` to or
/// from a control register and `lmsw` take).
fn gpr_index(r: Register) -> Option<u8> {
    let n = r as u32;
    if (Register::RAX as u32..=Register::R15 as u32).contains(&n) {
        Some((n - Register::RAX as u32) as u8)
    } else if (Register::AX as u32..=Register::R15W as u32).contains(&n) {
        Some((n - Register::AX as u32) as u8)
    } else {
        None
    }
}

fn reg(frame: &GuestFrame, r: Register) -> Option<u64> {
    gpr_index(r).map(|i| frame.gpr(i))
}

fn set_reg(frame: &mut GuestFrame, r: Register, v: u64) {
    if let Some(i) = gpr_index(r) {
        frame.set_gpr(i, v);
    }
}

fn set_ts<P: Platform>(hv: &mut Hypervisor<P>, on: bool) {
    if hv.cur_vcpu().fpu_ts != on {
        hv.cur_vcpu_mut().fpu_ts = on;
        hv.mark_hw_dirty();
    }
}

fn read_cr<P: Platform>(hv: &Hypervisor<P>, cr: Register) -> Option<u64> {
    let v = hv.cur_vcpu();
    Some(match cr {
        Register::CR0 => GUEST_CR0 | if v.fpu_ts { cr0::TS } else { 0 },
        Register::CR2 => hv.mem().read_u64(crate::traps::vcpu_cr2_addr(hv)),
        Register::CR3 => v.current_l4().addr(),
        Register::CR4 => cr4_policy(hv).read(&v.arch),
        _ => return None,
    })
}

/// `mov %reg, %crN` (Xen's `write_cr`): CR0 may change only TS (`fpu_taskswitch`); CR2 is
/// the vCPU's fault address; CR3 is a new kernel base table (`new_guest_cr3`); CR4 keeps the
/// bits the guest controls and its CPUID allows, ignoring the rest (`pv_fixup_guest_cr4`).
fn write_cr<P: Platform>(hv: &mut Hypervisor<P>, cr: Register, val: u64) -> Option<Outcome> {
    Some(match cr {
        Register::CR0 => {
            if (val ^ read_cr(hv, Register::CR0)?) & !cr0::TS != 0 {
                Outcome::Gp
            } else {
                set_ts(hv, val & cr0::TS != 0);
                Outcome::Done
            }
        }
        Register::CR2 => {
            let at = crate::traps::vcpu_cr2_addr(hv);
            hv.mem().write_u64(at, val);
            Outcome::Done
        }
        Register::CR3 => match crate::hypercall::mm::write_cr3(hv, hypercall_abi::Mfn(val >> 12)) {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Gp,
        },
        Register::CR4 => {
            let kept = cr4_policy(hv).fixup(val);
            let a = &mut hv.cur_vcpu_mut().arch;
            if a.cr4 != kept {
                a.cr4 = kept;
                hv.mark_hw_dirty();
            }
            Outcome::Done
        }
        _ => return None,
    })
}

/// `rdmsr` as Xen answers a PV kernel. What it refuses is #GP(0), except for a guest with no
/// #GP handler yet (early boot): an MSR the CPU has then reads as 0, as Xen 4.17 fakes it.
fn rdmsr<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Outcome {
    let which = frame.rcx as u32;
    hv.refresh_segment_bases(hv.current());
    let val = match read_msr(hv, which) {
        Some(v) => v,
        None if hv.cur_vcpu().traps[usize::from(crate::x86::vector::GP)].address == 0
            && which >> 16 != HYPERVISOR_MSR_BLOCK
            && hv.plat.rdmsr_safe(which).is_some() =>
        {
            0
        }
        None => return Outcome::Gp,
    };
    frame.rax = val & 0xffff_ffff;
    frame.rdx = val >> 32;
    Outcome::Done
}

/// The value of MSR `which` for the running vCPU, or `None` where Xen refuses it.
fn read_msr<P: Platform>(hv: &Hypervisor<P>, which: u32) -> Option<u64> {
    let v = hv.cur_vcpu();
    Some(match which {
        msr::EFER => efer::SCE | efer::LME | efer::LMA | efer::NXE,
        msr::FS_BASE => v.fs_base,
        msr::GS_BASE => v.gs_base_kernel,
        msr::SHADOW_GS_BASE => v.gs_base_user,
        msr::TSC_AUX if tsc_aux_visible(hv) => u64::from(v.arch.tsc_aux),
        msr::TSC => hv.plat.tsc(),
        msr::APIC_BASE => {
            let bsp = if hv.current().vcpu == 0 { apic_base::BSP } else { 0 };
            apic_base::ENABLE | apic_base::DEFAULT_PHYS_BASE | bsp
        }
        msr::PAT => XEN_MSR_PAT,
        msr::MISC_ENABLE => guest_misc_enable(hv.plat.rdmsr_safe(which)?),
        msr::PLATFORM_INFO | msr::PERF_CAPABILITIES => 0,
        // The MTRRs (CPUID shows no MTRR to PV guests) and anything unknown.
        _ => return None,
    })
}

/// True if the guest's CPUID offers `rdtscp` or `rdpid`, so `MSR_TSC_AUX` exists for it.
fn tsc_aux_visible<P: Platform>(hv: &Hypervisor<P>) -> bool {
    let leaf = |l: u32| crate::cpuid::pv_cpuid(l, hv.plat.cpuid(l, 0));
    leaf(0x8000_0001)[3] & crate::cpuid::EXT1_EDX_RDTSCP != 0 || leaf(7)[2] & crate::cpuid::L7_ECX_RDPID != 0
}

/// `wrmsr` as Xen takes it from a PV kernel: the segment bases (canonical values), TSC_AUX
/// (32 bits), EFER unchanged, MISC_ENABLE ignored (Xen only logs a change); #GP otherwise,
/// PAT included.
fn wrmsr<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Outcome {
    let val = (frame.rdx << 32) | (frame.rax & 0xffff_ffff);
    let which = frame.rcx as u32;
    match which {
        msr::FS_BASE | msr::GS_BASE | msr::SHADOW_GS_BASE => {
            if !is_canonical(val) {
                return Outcome::Gp;
            }
            hv.refresh_segment_bases(hv.current());
            let v = hv.cur_vcpu_mut();
            match which {
                msr::FS_BASE => v.fs_base = val,
                msr::GS_BASE => v.gs_base_kernel = val,
                _ => v.gs_base_user = val,
            }
            hv.bases_changed();
            Outcome::Done
        }
        msr::TSC_AUX if tsc_aux_visible(hv) => match u32::try_from(val) {
            Ok(aux) => {
                hv.cur_vcpu_mut().arch.tsc_aux = aux;
                hv.mark_hw_dirty();
                Outcome::Done
            }
            Err(_) => Outcome::Gp,
        },
        msr::EFER if read_msr(hv, which) == Some(val) => Outcome::Done,
        msr::MISC_ENABLE if hv.plat.rdmsr_safe(which).is_some() => Outcome::Done,
        _ => Outcome::Gp,
    }
}

/// True if the #PF a guest just took (error code `error_code`, address `cr2`) is QEMU 7.2
/// TCG's SMAP quirk rather than the guest's own fault: a ring-3 `iretq` or far return reads
/// its stack as a supervisor access, so with SMAP on it faults on the guest's (user) stack
/// with "present, supervisor, read". Real hardware never reports a supervisor access for
/// that stack read, so this cannot match there.
pub fn is_tcg_smap_quirk<P: Platform>(
    hv: &Hypervisor<P>,
    frame: &GuestFrame,
    error_code: u64,
    cr2: u64,
) -> bool {
    /// The frame a 64-bit `iretq` pops: RIP, CS, RFLAGS, RSP, SS.
    const IRET_FRAME: u64 = 5 * 8;
    if error_code != crate::x86::pfec::PRESENT
        || !(frame.rsp..frame.rsp.saturating_add(IRET_FRAME)).contains(&cr2)
    {
        return false;
    }
    let (bytes, n) = fetch(hv, frame.rip);
    decode(&bytes[..n], frame.rip).is_some_and(|i| {
        matches!(
            i.code(),
            Code::Iretq
                | Code::Iretd
                | Code::Iretw
                | Code::Retfq
                | Code::Retfd
                | Code::Retfw
                | Code::Retfq_imm16
                | Code::Retfd_imm16
                | Code::Retfw_imm16
        )
    })
}

/// RFLAGS bits the emulated read-modify-write forms set, as the CPU would.
mod arith {
    pub const CF: u64 = 1 << 0;
    pub const PF: u64 = 1 << 2;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const OF: u64 = 1 << 11;
    pub const ALL: u64 = CF | PF | (1 << 4) | ZF | SF | OF;
}

/// The store a faulting write instruction makes to a page-table entry, decoded for the
/// memory half (`mm::ptwr`), and what it does to the registers afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtwrStore {
    /// Operand size in bytes (1, 2, 4 or 8).
    pub bytes: usize,
    /// The new value of the operand.
    pub val: u64,
    /// `cmpxchg`: the value the operand must hold (the accumulator).
    pub expected: Option<u64>,
    pub effect: PtwrEffect,
}

/// What an emulated store does besides writing memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtwrEffect {
    /// `mov`.
    None,
    /// `xchg`: the register gets the old value.
    Exchange(Register),
    /// `cmpxchg`: ZF says whether it stored; if not, the accumulator gets the current value.
    CompareExchange,
    /// `and`/`or`/`xor`: the arithmetic flags of the result.
    Logic,
    /// `bts`/`btr`/`btc`: CF is the bit's old value.
    BitTest(u32),
}

/// A general register's value at its own width; `None` for the high-byte registers (AH...),
/// which no page-table code uses.
fn sized_reg(frame: &GuestFrame, r: Register) -> Option<u64> {
    if matches!(r, Register::AH | Register::BH | Register::CH | Register::DH) {
        return None;
    }
    let v = reg(frame, r.full_register())?;
    Some(v & width_mask(r.size()))
}

/// Writes `v` to `r` as the CPU does: a 32-bit write zero-extends, 8/16-bit ones merge.
fn set_sized_reg(frame: &mut GuestFrame, r: Register, v: u64) {
    let full = r.full_register();
    let mask = width_mask(r.size());
    let new = match r.size() {
        4 | 8 => v & mask,
        _ => (reg(frame, full).unwrap_or(0) & !mask) | (v & mask),
    };
    set_reg(frame, full, new);
}

fn width_mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

/// Decodes `insn`, a store to memory whose current value is `cur`, into the store Xen's
/// ptwr emulator would make: `mov`, `xchg`, `cmpxchg`, `and`/`or`/`xor` and `bts`/`btr`/`btc`
/// with a register or immediate source. `None`: not a form emulated here (the guest gets its
/// page fault, as Xen's emulator fails it).
pub fn ptwr_store(insn: &Instruction, frame: &GuestFrame, cur: u64) -> Option<PtwrStore> {
    use iced_x86::{Mnemonic, OpKind};
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
    let bytes = insn.memory_size().size();
    if !matches!(bytes, 1 | 2 | 4 | 8) {
        return None;
    }
    let mask = width_mask(bytes);
    let other = if mem_op == 0 { 1 } else { 0 };
    let src = || -> Option<u64> {
        match insn.op_kind(other) {
            OpKind::Register => sized_reg(frame, insn.op_register(other)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Some(insn.immediate(other) & mask),
            _ => None,
        }
    };
    let store = |val: u64, expected: Option<u64>, effect| {
        Some(PtwrStore { bytes, val: val & mask, expected, effect })
    };
    match insn.mnemonic() {
        Mnemonic::Mov if mem_op == 0 => store(src()?, None, PtwrEffect::None),
        Mnemonic::Xchg if insn.op_kind(other) == OpKind::Register => {
            store(src()?, None, PtwrEffect::Exchange(insn.op_register(other)))
        }
        Mnemonic::Cmpxchg if mem_op == 0 => {
            store(src()?, Some(frame.rax & mask), PtwrEffect::CompareExchange)
        }
        Mnemonic::And if mem_op == 0 => store(cur & src()?, None, PtwrEffect::Logic),
        Mnemonic::Or if mem_op == 0 => store(cur | src()?, None, PtwrEffect::Logic),
        Mnemonic::Xor if mem_op == 0 => store(cur ^ src()?, None, PtwrEffect::Logic),
        Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if mem_op == 0 => {
            // A register bit offset may address beyond the operand; only bits within it here.
            let bit = src()?;
            let bits = (bytes * 8) as u64;
            if insn.op_kind(1) == OpKind::Register && bit >= bits {
                return None;
            }
            let b = 1u64 << (bit % bits);
            let val = match insn.mnemonic() {
                Mnemonic::Bts => cur | b,
                Mnemonic::Btr => cur & !b,
                _ => cur ^ b,
            };
            store(val, None, PtwrEffect::BitTest((bit % bits) as u32))
        }
        _ => None,
    }
}

/// Writable page tables, the trap half (Xen's `ptwr_do_page_fault` and its emulator): a
/// write fault of the guest kernel on a read-only mapping of one of its own live L1 tables
/// is decoded here (as on Xen 4.17 for 64-bit PV kernels, whatever
/// `VMASST_TYPE_writable_pagetables` says)
/// ([`ptwr_store`]) and applied by `mm::ptwr` with `mmu_update`'s validation; the RIP moves
/// past it. False: the guest's own page fault (any other fault, a form not emulated, or an
/// entry `mmu_update` would refuse).
pub fn ptwr_write<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame, cr2: u64) -> bool {
    use crate::mm::ptwr::{PtwrOutcome, PtwrTarget};
    if !hv.cur_vcpu().kernel_mode {
        return false;
    }
    let Some(at) = hv.ptwr_target(cr2, frame.error_code) else {
        return false;
    };
    let (bytes, n) = fetch(hv, frame.rip);
    let Some(insn) = decode(&bytes[..n], frame.rip) else {
        return false;
    };
    let size = insn.memory_size().size().max(1);
    let at = PtwrTarget { l1: at.l1, offset: at.offset & !(size - 1) };
    let shift = (at.offset % 8) * 8;
    let cur = (hv.mem().read_pte(at.l1, at.offset / 8) >> shift) & width_mask(size);
    let Some(st) = ptwr_store(&insn, frame, cur) else {
        return false;
    };
    // Validated as mmu_update validates; the flush a reused frame owes and an L1TF-unsafe entry
    // (which crashes the domain) are handled as after mmu_update.
    let stored = match hv.ptwr_store(at, st.val, st.bytes, st.expected) {
        Ok(PtwrOutcome::Written) => true,
        Ok(PtwrOutcome::CmpxchgFailed(now)) => {
            set_sized_reg(frame, width_reg(size), now);
            false
        }
        // A crashed domain gets no page fault.
        Err(_) => return !hv.cur_dom().is_alive(),
    };
    match st.effect {
        PtwrEffect::None => {}
        PtwrEffect::Exchange(r) => set_sized_reg(frame, r, cur),
        PtwrEffect::CompareExchange => {
            frame.rflags = (frame.rflags & !arith::ZF) | if stored { arith::ZF } else { 0 };
        }
        PtwrEffect::Logic => {
            let sign = 1u64 << (size * 8 - 1);
            let mut f = frame.rflags & !arith::ALL;
            if st.val == 0 {
                f |= arith::ZF;
            }
            if st.val & sign != 0 {
                f |= arith::SF;
            }
            if (st.val as u8).count_ones().is_multiple_of(2) {
                f |= arith::PF;
            }
            frame.rflags = f;
        }
        PtwrEffect::BitTest(bit) => {
            frame.rflags = (frame.rflags & !arith::CF) | (((cur >> bit) & 1) * arith::CF);
        }
    }
    frame.rip = frame.rip.wrapping_add(insn.len() as u64);
    true
}

/// The accumulator at `bytes` width (where `cmpxchg` leaves the current value).
fn width_reg(bytes: usize) -> Register {
    match bytes {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}
