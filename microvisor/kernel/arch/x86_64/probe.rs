//! Boot-time proof that ring 0 cannot run or read what a guest maps: with SMEP and SMAP on,
//! a ring-0 call into a user page and a ring-0 read of one must each raise #PF. Guests run in
//! ring 3 on user pages, so this is the property that keeps a guest's code out of ring 0 even
//! if an entry path ever jumped to a guest-chosen address (as `syscall` from 32-bit code did
//! while CSTAR was 0). The result is printed as one structured boot line.
//!
//! A throw-away address space maps one user page at virtual address 0 holding `ret`. The
//! probes run on it with a fault expected: [`recover`], called by the ring-0 fault handler,
//! resumes at the probe's recovery label with the vector and error code in `%rax`.

use super::{cpu, paging};
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::xen::FIRST_HYPERVISOR_L4_SLOT;
use hypercall_abi::Mfn;
use microvisor::mm::frame_table::FrameTable;
use microvisor::mm::{pte, MachineMemory};
use microvisor::vcpu::GuestFrame;

/// Where the user page sits: the address a CSTAR of 0 sent ring 0 to.
const USER_VA: u64 = 0;
/// `ret`.
const RET: u8 = 0xc3;
/// Set in a probe's result when it faulted; the vector is in bits 32-39, the error code below.
const FAULTED: u64 = 1 << 63;

global_asm!(
    r#"
    .section .text.probe, "ax"
    /* probe_exec(rdi = address): calls it; returns 0 if it ran, or the fault from recover. */
    .globl probe_exec
probe_exec:
    call *%rdi
    xor %eax, %eax
    ret
    .globl probe_exec_recover
probe_exec_recover:
    /* The faulting call's return address is still on the stack. */
    add $8, %rsp
    ret

    /* probe_read(rdi = address): reads it; returns 0 if that worked, or the fault. */
    .globl probe_read
probe_read:
    .globl probe_read_insn
probe_read_insn:
    mov (%rdi), %rax
    xor %eax, %eax
    .globl probe_read_recover
probe_read_recover:
    ret

    /* msr_read_safe(edi = msr, rsi = out): reads the MSR into *out; returns 0, or the #GP
       from recover if the CPU refuses it. */
    .globl msr_read_safe
msr_read_safe:
    mov %edi, %ecx
    .globl msr_read_insn
msr_read_insn:
    rdmsr
    mov %eax, (%rsi)
    mov %edx, 4(%rsi)
    xor %eax, %eax
    .globl msr_read_recover
msr_read_recover:
    ret
    "#,
    options(att_syntax)
);

extern "C" {
    fn probe_exec(va: u64) -> u64;
    fn probe_read(va: u64) -> u64;
    fn probe_exec_recover();
    fn probe_read_insn();
    fn probe_read_recover();
    fn msr_read_safe(msr: u32, out: *mut u64) -> u64;
    fn msr_read_insn();
    fn msr_read_recover();
}

/// Reads an MSR the CPU may not have: `None` if `rdmsr` raised #GP.
pub fn rdmsr_safe(msr: u32) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: `rdmsr` only reads; a #GP on it is resumed at the recovery label by `recover`
    // (called from the ring-0 fault handler), which reports it in the result.
    let r = unsafe { msr_read_safe(msr, &mut v) };
    (r == 0).then_some(v)
}

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// What one probe saw.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Ring 0 did it: the protection is off.
    Allowed,
    /// Ring 0 faulted with this vector and error code.
    Blocked { vector: u8, error_code: u64 },
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Allowed => f.write_str("allowed"),
            Outcome::Blocked { vector, error_code } => {
                write!(f, "blocked({},ec={error_code:#x})", microvisor::traps::vector::name(*vector))
            }
        }
    }
}

fn outcome(r: u64) -> Outcome {
    if r & FAULTED == 0 {
        Outcome::Allowed
    } else {
        Outcome::Blocked { vector: (r >> 32) as u8, error_code: r & 0xffff_ffff }
    }
}

/// Runs both probes on a throw-away address space and returns (exec, read). The frames come
/// from and go back to the frame table.
pub fn run(
    frames: &mut FrameTable,
    mem: &paging::DirectMap,
    hv_slots: &[u64; paging::NR_HV_SLOTS],
) -> Option<(Outcome, Outcome)> {
    let mut tables: heapless::Vec<Mfn, 5> = heapless::Vec::new();
    for _ in 0..5 {
        match frames.alloc_xen_frame(mem) {
            Some(f) => {
                let _ = tables.push(f);
            }
            None => {
                for f in tables {
                    let _ = frames.free_frame(mem, f);
                }
                return None;
            }
        }
    }
    let [l4, l3, l2, l1, page] = [tables[0], tables[1], tables[2], tables[3], tables[4]];
    for (i, e) in hv_slots.iter().enumerate() {
        mem.write_pte(l4, FIRST_HYPERVISOR_L4_SLOT + i, *e);
    }
    let user = pte::PRESENT | pte::RW | pte::USER;
    mem.write_pte(l4, pte::table_index(USER_VA, 4), pte::make(l3, user));
    mem.write_pte(l3, pte::table_index(USER_VA, 3), pte::make(l2, user));
    mem.write_pte(l2, pte::table_index(USER_VA, 2), pte::make(l1, user));
    mem.write_pte(l1, pte::table_index(USER_VA, 1), pte::make(page, pte::PRESENT | pte::USER));
    mem.write(page.addr(), &[RET]);

    let old_cr3 = cpu::read_cr3();
    ACTIVE.store(true, Ordering::Release);
    // SAFETY: the new L4 carries the hypervisor's slots, so the code, stack and data in use stay
    // mapped; the old CR3 is restored before the tables are freed.
    unsafe { cpu::write_cr3(l4.addr()) };
    // SAFETY: the target is our own `ret` on a user page. If ring 0 may execute it, it returns
    // at once; otherwise the #PF is recovered (see `recover`) and the probe returns the fault.
    let exec = unsafe { probe_exec(USER_VA) };
    // SAFETY: a read of our own user page: it succeeds, or its #PF is recovered.
    let read = unsafe { probe_read(USER_VA) };
    // SAFETY: back to the tables the hypervisor booted on (they map it identically).
    unsafe { cpu::write_cr3(old_cr3) };
    ACTIVE.store(false, Ordering::Release);
    for f in tables {
        let _ = frames.free_frame(mem, f);
    }
    Some((outcome(exec), outcome(read)))
}

/// Called for a fault in ring 0: if it is a probe's expected #PF (or the #GP of an
/// `rdmsr_safe`), resumes at its recovery label with the fault in `%rax` and returns true.
pub fn recover(f: &mut GuestFrame) -> bool {
    const PF: u64 = 14;
    const GP: u64 = 13;
    if f.vector == GP && f.rip == msr_read_insn as *const () as u64 {
        f.rax = FAULTED | (f.vector << 32) | (f.error_code & 0xffff_ffff);
        f.rip = msr_read_recover as *const () as u64;
        return true;
    }
    if !ACTIVE.load(Ordering::Acquire) || f.vector != PF {
        return false;
    }
    let resume = if f.rip == USER_VA {
        probe_exec_recover as *const () as u64
    } else if f.rip == probe_read_insn as *const () as u64 {
        probe_read_recover as *const () as u64
    } else {
        return false;
    };
    f.rax = FAULTED | (f.vector << 32) | (f.error_code & 0xffff_ffff);
    f.rip = resume;
    true
}
