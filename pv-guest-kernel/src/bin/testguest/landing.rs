//! Catching where control lands: scenarios about entry paths (32-bit `syscall`, software
//! interrupts, emulated instructions, `iret`) run a probe that never returns normally, and
//! need to see what the hypervisor delivered — which trap-table vector or callback ran, the
//! bounce frame it got (`RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS`) and the registers
//! at that moment.
//!
//! [`catch`] saves the callee-saved registers and the stack pointer (a setjmp), then runs the
//! probe. Every landing stub (one per vector, [`vector_stub`], and one per callback) records
//! the general registers and eight words of the frame and resumes after `catch` (a longjmp),
//! which returns what landed. Probes are written in assembly so that nothing the compiler
//! owns is live across the jump.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::xen::{trap_flags, TrapInfo, FLAT_KERNEL_CS};
use hypercall_abi::Errno;
use pv_guest_kernel::hypercall;
use pv_guest_kernel::traps;

/// Landing id of the syscall callback.
pub const ID_SYSCALL: u64 = 1;
/// Landing id of the syscall32 callback.
pub const ID_SYSCALL32: u64 = 2;
/// Landing ids of trap-table vectors: `VECTOR_BASE + vector`.
pub const VECTOR_BASE: u64 = 0x100;

/// Registers at landing: rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15.
static REGS: [AtomicU64; 15] = [const { AtomicU64::new(0) }; 15];
/// Eight words from the landing stack pointer: the bounce frame (and one word beyond it when
/// there is no error code).
static FRAME: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static CATCH_RSP: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .pushsection .text.tg_landing, "ax"

    /* __tg_catch(probe, args): runs probe(args); returns 0 if it returns, else the id of the
       landing stub that took over. */
    .globl __tg_catch
__tg_catch:
    "#,
    push_callee_saved!(),
    r#"
    mov %rsp, {catch_rsp}(%rip)
    mov %rdi, %rax
    mov %rsi, %rdi
    call *%rax
    xor %eax, %eax
    jmp 9f

    /* A landing stub pushed its id; the bounce frame lies above it. */
__tg_land_common:
    "#,
    store_gprs!(regs),
    r#"
    lea 8(%rsp), %rsi
    lea {frame}(%rip), %rdi
    mov $8, %ecx
    cld
    rep movsq
    pop %rax
9:  mov {catch_rsp}(%rip), %rsp
    "#,
    pop_callee_saved!(),
    r#"
    ret

    .balign 16
    .globl __tg_land_syscall
__tg_land_syscall:
    pushq ${id_syscall}
    jmp __tg_land_common

    .balign 16
    .globl __tg_land_syscall32
__tg_land_syscall32:
    pushq ${id_syscall32}
    jmp __tg_land_common

    /* One 16-byte stub per vector. */
    .balign 16
    .globl __tg_land_vectors
__tg_land_vectors:
    .set vec, 0
    .rept 256
        .balign 16
        pushq $({vector_base} + vec)
        jmp __tg_land_common
        .set vec, vec + 1
    .endr

    /* Probes: each takes a pointer to its arguments in rdi and never returns normally. */

    /* __tg_jump(&[rax, rcx, rdx, rsi, rdi, r10, target]) */
    .globl __tg_jump
__tg_jump:
    mov 0(%rdi), %rax
    mov 8(%rdi), %rcx
    mov 16(%rdi), %rdx
    mov 24(%rdi), %rsi
    mov 40(%rdi), %r10
    mov 48(%rdi), %r11
    mov 32(%rdi), %rdi
    jmp *%r11

    /* __tg_iret_to(&[rip, cs, rflags, rsp, ss]): the iret hypercall with a full return. */
    .globl __tg_iret_to
__tg_iret_to:
    pushq 32(%rdi)
    pushq 24(%rdi)
    pushq 16(%rdi)
    pushq 8(%rdi)
    pushq 0(%rdi)
    pushq $0
    jmp hypercall_page + {iret} * 32

    .popsection
    "#,
    catch_rsp = sym CATCH_RSP,
    regs = sym REGS,
    frame = sym FRAME,
    id_syscall = const ID_SYSCALL,
    id_syscall32 = const ID_SYSCALL32,
    vector_base = const VECTOR_BASE,
    iret = const hypercall_abi::hypercall::nr::IRET,
    options(att_syntax)
);

extern "C" {
    fn __tg_catch(probe: unsafe extern "C" fn(*const u64), args: *const u64) -> u64;
    fn __tg_land_syscall();
    fn __tg_land_syscall32();
    static __tg_land_vectors: u8;
    /// Loads rax, rcx, rdx, rsi, rdi, r10 from `args[0..6]` and jumps to `args[6]`.
    pub fn __tg_jump(args: *const u64);
    /// The `iret` hypercall to `args = [rip, cs, rflags, rsp, ss]`.
    pub fn __tg_iret_to(args: *const u64);
}

/// The syscall callback's landing stub.
pub fn syscall_stub() -> u64 {
    __tg_land_syscall as *const () as u64
}

/// The syscall32 callback's landing stub.
pub fn syscall32_stub() -> u64 {
    __tg_land_syscall32 as *const () as u64
}

/// The landing stub of trap-table vector `v`.
pub fn vector_stub(v: u8) -> u64 {
    core::ptr::addr_of!(__tg_land_vectors) as u64 + 16 * u64::from(v)
}

/// What a landing stub recorded.
#[derive(Clone, Copy, Debug)]
pub struct Landed {
    pub id: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15 when the stub ran.
    pub regs: [u64; 15],
    frame: [u64; 8],
}

impl Landed {
    /// The trap-table vector, if a vector stub landed.
    pub fn vector(&self) -> Option<u8> {
        (self.id >= VECTOR_BASE).then(|| (self.id - VECTOR_BASE) as u8)
    }

    fn has_error_code(&self) -> bool {
        self.vector().is_some_and(traps::has_error_code)
    }

    /// Word `i` of the frame after RCX, R11 and the error code: 0 RIP, 1 CS, 2 RFLAGS, 3 RSP, 4 SS.
    fn word(&self, i: usize) -> u64 {
        self.frame[2 + usize::from(self.has_error_code()) + i]
    }

    pub fn error_code(&self) -> Option<u64> {
        self.has_error_code().then_some(self.frame[2])
    }
    pub fn rcx(&self) -> u64 {
        self.frame[0]
    }
    pub fn r11(&self) -> u64 {
        self.frame[1]
    }
    pub fn rip(&self) -> u64 {
        self.word(0)
    }
    /// The code selector (without the saved upcall mask in bits 32-39).
    pub fn cs(&self) -> u64 {
        self.word(1) & 0xffff
    }
    pub fn rflags(&self) -> u64 {
        self.word(2)
    }
    pub fn rsp(&self) -> u64 {
        self.word(3)
    }
    pub fn ss(&self) -> u64 {
        self.word(4) & 0xffff
    }
    pub fn rax(&self) -> u64 {
        self.regs[0]
    }
}

/// Runs `probe(args)` and returns what landed, or `None` if the probe returned.
///
/// # Safety
/// `probe` must be one of the assembly probes above (or alike): it may leave the current
/// context for good, so nothing but the callee-saved registers survives it.
pub unsafe fn catch(probe: unsafe extern "C" fn(*const u64), args: &[u64]) -> Option<Landed> {
    // SAFETY: the caller passes a probe; `__tg_catch` restores the callee-saved registers
    // and the stack pointer whichever way control comes back.
    let id = unsafe { __tg_catch(probe, args.as_ptr()) };
    (id != 0).then(|| Landed {
        id,
        regs: core::array::from_fn(|i| REGS[i].load(Ordering::SeqCst)),
        frame: core::array::from_fn(|i| FRAME[i].load(Ordering::SeqCst)),
    })
}

/// Points trap-table `vectors` (with their DPL) at the landing stubs, each entry masking
/// events as an interrupt gate does. Other vectors keep their handlers.
pub fn install_vectors(vectors: &[(u8, u8)]) -> Result<(), Errno> {
    let mut table: Vec<TrapInfo> = vectors
        .iter()
        .map(|&(vector, dpl)| TrapInfo {
            vector,
            flags: dpl | trap_flags::DISABLES_EVENTS,
            cs: FLAT_KERNEL_CS & !3,
            _pad: 0,
            address: vector_stub(vector),
        })
        .collect();
    table.push(TrapInfo::default());
    hypercall::check(hypercall::set_trap_table(&table)).map(|_| ())
}

/// Puts the runtime's own trap table back (clearing vectors it does not cover).
pub fn restore_vectors() -> Result<(), Errno> {
    traps::clear_table()?;
    traps::init()
}
