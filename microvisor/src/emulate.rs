//! Privileged-instruction emulation for PV kernels (Xen's `pv/emul-priv-op.c`): a guest
//! kernel runs in ring 3, so `rdmsr`, `wrmsr`, `mov` to or from a control register, `clts`,
//! `wbinvd`/`invd` and `lmsw` raise #GP(0), and the hypervisor carries them out on the vCPU's
//! virtual state as Xen does. The instruction is decoded with `iced-x86` (a maintained,
//! fuzzed `no_std` decoder: prefixes, REX and ModRM forms are its job, not ours). What Xen
//! refuses gets #GP(0) as on Xen; the RIP is advanced only after success, and
//! `traps::check_return_rip` keeps any result off the non-canonical range.

use crate::guest_mem::GuestSpace;
use crate::hv::Hypervisor;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::vcpu::GuestFrame;
use crate::x86::{cr0, cr4, efer, msr};
use hypercall_abi::xen::is_canonical;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

/// The CR0 a PV kernel reads (TS is its virtual one).
pub const GUEST_CR0: u64 = cr0::PG | cr0::AM | cr0::WP | cr0::NE | cr0::ET | cr0::MP | cr0::PE;
/// The CR4 a PV kernel reads. Xen fixes a written CR4 up to what the guest may control
/// rather than refusing it; here writes are accepted and this value stays (see ARCHITECTURE).
pub const GUEST_CR4: u64 = cr4::PSE | cr4::PAE | cr4::MCE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT;
/// Xen's PAT (`XEN_MSR_PAT`), what a PV guest reads.
pub const XEN_MSR_PAT: u64 = 0x0005_0100_0704_0406;
/// `MSR_IA32_MISC_ENABLE` as Xen shows it (BTS and PEBS unavailable, xTPR disabled, fast
/// strings on), without reading the host's.
pub const GUEST_MISC_ENABLE: u64 = (1 << 0) | (1 << 11) | (1 << 12) | (1 << 23);
/// MSR numbers emulated here beyond `x86::msr`.
pub mod more_msr {
    pub const PLATFORM_INFO: u32 = 0xce;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
}

/// Longest x86 instruction.
const MAX_INSN: usize = 15;

/// How an emulated instruction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the RIP moves past the instruction.
    Done,
    /// Xen refuses it: the guest gets #GP(0) at the instruction.
    Gp,
}

/// Fetches the instruction bytes at `rip` (as many of the 15 as are readable).
pub fn fetch<P: Platform>(hv: &Hypervisor<P>, rip: u64) -> ([u8; MAX_INSN], usize) {
    let mut bytes = [0u8; MAX_INSN];
    let space = GuestSpace::new(hv.mem(), hv.cur_vcpu().current_l4());
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
/// kernel mode. `None`: not one Xen emulates (the guest gets the #GP).
pub fn privileged_op<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Option<Outcome> {
    if !hv.cur_vcpu().kernel_mode {
        return None;
    }
    let (bytes, n) = fetch(hv, frame.rip);
    let insn = decode(&bytes[..n], frame.rip)?;
    let outcome = match insn.code() {
        Code::Rdmsr => rdmsr(hv, frame),
        Code::Wrmsr => wrmsr(hv, frame),
        Code::Mov_r64_cr => {
            let v = read_cr(hv, insn.op1_register())?;
            set_reg(frame, insn.op0_register(), v);
            Outcome::Done
        }
        Code::Mov_cr_r64 => write_cr(hv, insn.op0_register(), reg(frame, insn.op1_register())?)?,
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
    if outcome == Outcome::Done {
        frame.rip = frame.rip.wrapping_add(insn.len() as u64);
    }
    Some(outcome)
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
        Register::CR4 => GUEST_CR4,
        _ => return None,
    })
}

/// `mov %reg, %crN` (Xen's `write_cr`): CR0 may change only TS (`fpu_taskswitch`); CR2 is
/// the vCPU's fault address; CR3 is a new kernel base table (`new_guest_cr3`); CR4 is
/// accepted (see [`GUEST_CR4`]).
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
        Register::CR4 => Outcome::Done,
        _ => return None,
    })
}

/// `rdmsr` as Xen answers a PV kernel; what it refuses is #GP(0).
fn rdmsr<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Outcome {
    let v = hv.cur_vcpu();
    let val = match frame.rcx as u32 {
        msr::EFER => efer::SCE | efer::LME | efer::LMA | efer::NXE,
        msr::FS_BASE => v.fs_base,
        msr::GS_BASE => v.gs_base_kernel,
        msr::SHADOW_GS_BASE => v.gs_base_user,
        more_msr::PAT => XEN_MSR_PAT,
        more_msr::MISC_ENABLE => GUEST_MISC_ENABLE,
        more_msr::PLATFORM_INFO => 0,
        // APIC base, the MTRRs (CPUID shows no MTRR to PV guests) and anything unknown.
        _ => return Outcome::Gp,
    };
    frame.rax = val & 0xffff_ffff;
    frame.rdx = val >> 32;
    Outcome::Done
}

/// `wrmsr` as Xen takes it from a PV kernel: the segment bases (canonical values), and a
/// write of the value a read gives for the MSRs a guest may only read; #GP otherwise.
fn wrmsr<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Outcome {
    let val = (frame.rdx << 32) | (frame.rax & 0xffff_ffff);
    let which = frame.rcx as u32;
    match which {
        msr::FS_BASE | msr::GS_BASE | msr::SHADOW_GS_BASE => {
            if !is_canonical(val) {
                return Outcome::Gp;
            }
            let v = hv.cur_vcpu_mut();
            match which {
                msr::FS_BASE => v.fs_base = val,
                msr::GS_BASE => v.gs_base_kernel = val,
                _ => v.gs_base_user = val,
            }
            hv.mark_hw_dirty();
            Outcome::Done
        }
        msr::EFER | more_msr::PAT | more_msr::MISC_ENABLE => {
            let mut probe = GuestFrame { rcx: frame.rcx, ..GuestFrame::default() };
            match rdmsr(hv, &mut probe) {
                Outcome::Done if (probe.rdx << 32 | probe.rax) == val => Outcome::Done,
                _ => Outcome::Gp,
            }
        }
        _ => Outcome::Gp,
    }
}
