//! The fuzzer's CPU-level operations: short machine-code snippets it writes into its exec
//! page and runs — privileged and emulated instructions, `int n`, segment-register loads, far
//! jumps into compat mode, instructions that end at the edge of the canonical address space,
//! hypercalls made with odd flags — `iret` hypercalls with generated frames (to kernel mode,
//! compat mode and user mode), and excursions into guest user mode on our kernel tables or on
//! a user L4 built from the pool.
//!
//! One mechanism brings every snippet back: [`__fz_exec`] saves our stack pointer and jumps
//! to the snippet with generated registers; the snippet ends by jumping to
//! [`__fz_exec_return`], or faults (any vector: the fuzzer's trap handler sends the frame
//! there, in kernel mode), or, from user mode, executes `syscall`, which the hypervisor bounces
//! to our syscall callback, which jumps there too. `__fz_exec_return` records the registers,
//! restores the stack and flags and returns to the Rust caller.

use super::fuzz::{restore, Fuzzer};
use super::fuzz_mem::{CODE_PAGE, EXEC_DATA_VA, EXEC_VA, TOP_VA};
use alloc::format;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{
    mmuext, uvmf, vgcf, FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32,
    FLAT_RING3_SS64,
};
use hypercall_abi::Errno;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::traps::{self, TrapFrame, NR_TRAP_VECTORS};
use pv_guest_kernel::{hypercall, println};

/// The general registers a snippet starts with and ends with (x86 encoding order without
/// `%rsp`: rax rcx rdx rbx rbp rsi rdi r8..r15).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Regs(pub [u64; 15]);

/// Register numbers in [`Regs`].
mod r {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RSI: usize = 5;
    pub const RDI: usize = 6;
    pub const R8: usize = 7;
    pub const R10: usize = 9;
    /// The registers a hypercall takes (number, then arguments 1..5), as indexes into
    /// [`Regs`](super::Regs) and x86 register numbers.
    pub const HYPERCALL: [(usize, u8); 6] = [(RAX, 0), (RDI, 7), (RSI, 6), (RDX, 2), (R10, 10), (R8, 8)];
}

/// Shared with the assembly below (offsets are asserted).
#[repr(C)]
struct ExecState {
    /// Our stack pointer while a snippet runs.
    rsp: u64,
    /// Where the snippet starts.
    entry: u64,
    regs_in: Regs,
    regs_out: Regs,
    /// RFLAGS when the snippet ended.
    rflags_out: u64,
    /// 1 if the snippet came back through the syscall callback (from user mode).
    via_syscall: u64,
    /// The user-mode `%rax`, RIP and CS the callback's frame held.
    cb: [u64; 3],
}

struct Shared(UnsafeCell<ExecState>);
// SAFETY: one vCPU; the state is written by the fuzzer before a snippet runs and by the
// snippet's way back, never at the same time.
unsafe impl Sync for Shared {}

#[no_mangle]
static FZ_STATE: Shared = Shared(UnsafeCell::new(ExecState {
    rsp: 0,
    entry: 0,
    regs_in: Regs([0; 15]),
    regs_out: Regs([0; 15]),
    rflags_out: 0,
    via_syscall: 0,
    cb: [0; 3],
}));

const O_RSP: usize = core::mem::offset_of!(ExecState, rsp);
const O_ENTRY: usize = core::mem::offset_of!(ExecState, entry);
const O_IN: usize = core::mem::offset_of!(ExecState, regs_in);
const O_OUT: usize = core::mem::offset_of!(ExecState, regs_out);
const O_FLAGS: usize = core::mem::offset_of!(ExecState, rflags_out);
const O_VIA: usize = core::mem::offset_of!(ExecState, via_syscall);
const O_CB: usize = core::mem::offset_of!(ExecState, cb);

/// Set while a snippet runs: a trap then belongs to it.
static ACTIVE: AtomicU64 = AtomicU64::new(0);
/// The last snippet trap: vector (+1; 0 = none), error code, RIP, CS.
static TRAP: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// The campaign's seed, for the report of a trap in our own code.
static SEED: AtomicU64 = AtomicU64::new(0);
/// The operation being performed, for the same report.
static OP: AtomicU64 = AtomicU64::new(0);

/// Kernel stack for bounces from user mode and for the trap handler's return.
const KSTACK_SIZE: usize = 16 * 1024;
#[repr(C, align(16))]
struct KernelStack(UnsafeCell<[u8; KSTACK_SIZE]>);
// SAFETY: only the hypervisor (bounce frames) and the handlers running on it use it.
unsafe impl Sync for KernelStack {}
static KSTACK: KernelStack = KernelStack(UnsafeCell::new([0; KSTACK_SIZE]));

fn kstack_top() -> u64 {
    (KSTACK.0.get() as u64 + KSTACK_SIZE as u64) & !15
}

core::arch::global_asm!(
    r#"
    .pushsection .text.fuzz_exec, "ax"

    .globl __fz_exec
__fz_exec:
    "#,
    push_callee_saved!(),
    r#"
    mov %rsp, FZ_STATE+{o_rsp}(%rip)
    mov FZ_STATE+{o_in}+8*1(%rip), %rcx
    mov FZ_STATE+{o_in}+8*2(%rip), %rdx
    mov FZ_STATE+{o_in}+8*3(%rip), %rbx
    mov FZ_STATE+{o_in}+8*4(%rip), %rbp
    mov FZ_STATE+{o_in}+8*5(%rip), %rsi
    mov FZ_STATE+{o_in}+8*6(%rip), %rdi
    mov FZ_STATE+{o_in}+8*7(%rip), %r8
    mov FZ_STATE+{o_in}+8*8(%rip), %r9
    mov FZ_STATE+{o_in}+8*9(%rip), %r10
    mov FZ_STATE+{o_in}+8*10(%rip), %r11
    mov FZ_STATE+{o_in}+8*11(%rip), %r12
    mov FZ_STATE+{o_in}+8*12(%rip), %r13
    mov FZ_STATE+{o_in}+8*13(%rip), %r14
    mov FZ_STATE+{o_in}+8*14(%rip), %r15
    mov FZ_STATE+{o_in}(%rip), %rax
    jmp *FZ_STATE+{o_entry}(%rip)

    .globl __fz_exec_return
__fz_exec_return:
    mov %rax, FZ_STATE+{o_out}(%rip)
    mov %rcx, FZ_STATE+{o_out}+8*1(%rip)
    mov %rdx, FZ_STATE+{o_out}+8*2(%rip)
    mov %rbx, FZ_STATE+{o_out}+8*3(%rip)
    mov %rbp, FZ_STATE+{o_out}+8*4(%rip)
    mov %rsi, FZ_STATE+{o_out}+8*5(%rip)
    mov %rdi, FZ_STATE+{o_out}+8*6(%rip)
    mov %r8, FZ_STATE+{o_out}+8*7(%rip)
    mov %r9, FZ_STATE+{o_out}+8*8(%rip)
    mov %r10, FZ_STATE+{o_out}+8*9(%rip)
    mov %r11, FZ_STATE+{o_out}+8*10(%rip)
    mov %r12, FZ_STATE+{o_out}+8*11(%rip)
    mov %r13, FZ_STATE+{o_out}+8*12(%rip)
    mov %r14, FZ_STATE+{o_out}+8*13(%rip)
    mov %r15, FZ_STATE+{o_out}+8*14(%rip)
    mov FZ_STATE+{o_rsp}(%rip), %rsp
    pushfq
    pop %rax
    mov %rax, FZ_STATE+{o_flags}(%rip)
    /* TF, DF, AC and NT off again (IF is virtual: the caller restores the upcall mask). */
    pushq $2
    popfq
    xor %eax, %eax
    mov %eax, %ds
    mov %eax, %es
    mov ${ss}, %eax
    mov %eax, %ss
    "#,
    pop_callee_saved!(),
    r#"
    ret

    /* The syscall callback: user mode executed `syscall`. Frame: RCX R11 RIP CS RFLAGS RSP SS. */
    .globl __fz_syscall_cb
__fz_syscall_cb:
    movq $1, FZ_STATE+{o_via}(%rip)
    mov %rax, FZ_STATE+{o_cb}(%rip)
    mov 16(%rsp), %rax
    mov %rax, FZ_STATE+{o_cb}+8(%rip)
    mov 24(%rsp), %rax
    mov %rax, FZ_STATE+{o_cb}+16(%rip)
    mov FZ_STATE+{o_cb}(%rip), %rax
    jmp __fz_exec_return

    .popsection
    "#,
    o_rsp = const O_RSP,
    o_entry = const O_ENTRY,
    o_in = const O_IN,
    o_out = const O_OUT,
    o_flags = const O_FLAGS,
    o_via = const O_VIA,
    o_cb = const O_CB,
    ss = const FLAT_RING3_SS64,
    options(att_syntax)
);

extern "C" {
    fn __fz_exec();
    fn __fz_exec_return();
    fn __fz_syscall_cb();
}

fn state() -> *mut ExecState {
    FZ_STATE.0.get()
}

/// The kernel code selector with RPL 0, as the hypervisor's bounce frames carry it.
const KERNEL_CS: u64 = (FLAT_KERNEL_CS & !3) as u64;

/// The fuzzer's handler for every vector while a campaign runs: a trap during a snippet
/// ends the snippet (the frame is sent to `__fz_exec_return` in kernel mode); anywhere else
/// it is a fault in our own code, reported with the seed.
fn on_trap(f: &mut TrapFrame) {
    if f.vector == 7 && ACTIVE.load(Ordering::SeqCst) == 0 {
        // The virtual TS a call set: the hypervisor cleared it when it delivered #NM.
        return;
    }
    if ACTIVE.swap(0, Ordering::SeqCst) == 0 {
        println!(
            "TEST fuzz FAIL at call {} seed={}: trap {} in the fuzzer's own code at rip {:#x} (error {:#x}, cs {:#x}, rsp {:#x})",
            OP.load(Ordering::SeqCst),
            SEED.load(Ordering::SeqCst),
            traps::name(f.vector),
            f.rip,
            f.error_code,
            f.cs,
            f.rsp,
        );
        hypercall::shutdown(hypercall_abi::sched::shutdown::CRASH);
    }
    TRAP[0].store(f.vector + 1, Ordering::SeqCst);
    TRAP[1].store(f.error_code, Ordering::SeqCst);
    TRAP[2].store(f.rip, Ordering::SeqCst);
    TRAP[3].store(f.cs, Ordering::SeqCst);
    f.rip = __fz_exec_return as *const () as u64;
    f.cs = KERNEL_CS;
    // IF clear: events stay masked until the fuzzer unmasks them.
    f.rflags = 2;
    f.rsp = kstack_top() - 256;
    f.ss = u64::from(FLAT_KERNEL_SS);
}

/// How a snippet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// It ran to its end.
    Normally,
    /// A trap (vector, error code, RIP, CS).
    Trap(u64, u64, u64, u64),
    /// From user mode through the syscall callback (user RIP, CS).
    Syscall(u64, u64),
}

/// Little machine-code assembler for snippets.
pub(super) struct Code {
    pub bytes: Vec<u8>,
    /// Where the loads of a kernel-mode hypercall's registers go: just before its `syscall`,
    /// or before the flag-setting instructions that lead to it.
    hypercall_at: Option<usize>,
}

impl Code {
    fn new() -> Code {
        Code { bytes: Vec::new(), hypercall_at: None }
    }
    /// `syscall` (in kernel mode a hypercall; see [`Code::load_hypercall_regs`]).
    fn syscall(&mut self) -> &mut Self {
        self.hypercall_at = Some(self.bytes.len());
        self.b(&[0x0f, 0x05])
    }
    /// Loads the hypercall registers of `g` right before the `syscall` (instructions before
    /// it in the snippet — `in`, `cpuid`, `rdmsr`, a control-register read — write %rax,
    /// %rdx, %rcx: the hypercall made must be the one generated, whose restore bits are set,
    /// not whatever number and arguments they leave). `movabs` leaves the flags alone.
    fn load_hypercall_regs(&mut self, g: &Regs) {
        if let Some(at) = self.hypercall_at.take() {
            let mut l = Code::new();
            for (i, reg) in r::HYPERCALL {
                l.movabs(reg, g.0[i]);
            }
            self.bytes.splice(at..at, l.bytes);
        }
    }
    /// Runs `f` (which emits a flag-setting prefix and then an instruction) so that the
    /// hypercall loads, if that instruction is a `syscall`, go before the prefix: a single-
    /// step flag then still traps after the `syscall`, not after the first load.
    fn prefixed(&mut self, f: impl FnOnce(&mut Code)) -> &mut Self {
        let (at, before) = (self.bytes.len(), self.hypercall_at);
        f(self);
        if self.hypercall_at != before {
            self.hypercall_at = Some(at);
        }
        self
    }
    fn b(&mut self, bs: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bs);
        self
    }
    /// `movabs $imm, %reg` (reg number in x86 order, 0..15).
    fn movabs(&mut self, reg: u8, imm: u64) -> &mut Self {
        let rex = 0x48 | if reg >= 8 { 1 } else { 0 };
        self.b(&[rex, 0xb8 + (reg & 7)]).b(&imm.to_le_bytes())
    }
    /// `jmp *0(%rip)` with the 8-byte target after it (no register used).
    fn jmp_abs(&mut self, target: u64) -> &mut Self {
        self.b(&[0xff, 0x25, 0, 0, 0, 0]).b(&target.to_le_bytes())
    }
    /// The way back in 64-bit mode.
    fn tail(&mut self) -> &mut Self {
        self.jmp_abs(__fz_exec_return as *const () as u64)
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Offsets inside the exec page: the snippet, a 64-bit way back for compat code, the user
/// program, far pointers and frames.
const OFF_BACK64: u64 = 0x600;
const OFF_USER: u64 = 0x700;
const OFF_COMPAT: u64 = 0x900;
const OFF_FARPTR: u64 = 0xc00;
/// In the exec data page: frames for `iret`, the user stack top.
const DATA_FRAME: u64 = 0x800;
const DATA_IRETQ: u64 = 0x880;
/// Scratch for instructions that write through %rdi.
const DATA_SCRATCH: u64 = 0x900;
const DATA_SCRATCH_LEN: u64 = 0x400;
const USER_STACK_TOP: u64 = EXEC_DATA_VA + 0x1000 - 64;
/// The stack of kernel code in compat mode (which only uses the low half of %rsp).
const COMPAT_STACK_TOP: u64 = EXEC_DATA_VA + 0xf80;

impl Fuzzer {
    /// Installs the trap handlers, the syscall callback and the kernel stack for user mode.
    pub fn exec_init(&mut self) -> Result<(), Errno> {
        for v in 0..NR_TRAP_VECTORS as u8 {
            traps::set_handler(v, Some(on_trap));
        }
        self.restore_state(restore::CALLBACKS | restore::STACK);
        if self.fails.is_empty() {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }

    /// Sets the seed the trap report names.
    pub fn exec_seed(seed: u64) {
        SEED.store(seed, Ordering::SeqCst);
    }

    /// Tells the trap handler which operation is running.
    pub fn exec_op(seq: u64) {
        OP.store(seq, Ordering::SeqCst);
    }

    /// Removes the handlers at the end of the campaign.
    pub fn finish(&mut self) {
        self.restore_state(restore::ALL);
        for v in 0..NR_TRAP_VECTORS as u8 {
            traps::set_handler(v, None);
        }
    }

    /// Writes code into the exec page at `off` (through its writable direct-map address).
    fn emit(&self, page: &mm::Page, off: u64, code: &[u8]) {
        for (k, &b) in code.iter().enumerate() {
            let at = off + k as u64;
            if at < 4096 {
                // SAFETY: the exec/top pages are ours, writable in the direct map; the code
                // there runs only when we jump to it.
                unsafe { ((page.va + at) as *mut u8).write_volatile(b) };
            }
        }
    }

    /// Writes a word into the exec data page.
    fn data_word(&self, off: u64, v: u64) {
        let p = &self.mem.exec_data;
        if off + 8 <= 4096 {
            // SAFETY: the exec data page is ours and writable in the direct map.
            unsafe { ((p.va + off) as *mut u64).write_volatile(v) };
        }
    }

    /// Runs the code at `entry` with `regs`; returns how it ended and the registers.
    fn run_snippet(&mut self, what: &'static str, entry: u64, regs: Regs) -> (Ended, Regs) {
        self.mask_if_needed();
        self.note(what, nr::ARCH_0, [entry, regs.0[r::RAX], regs.0[r::RCX], regs.0[r::RDX], regs.0[r::RDI]]);
        let st = state();
        // SAFETY: single vCPU; the assembly reads these before the snippet runs.
        unsafe {
            (*st).entry = entry;
            (*st).regs_in = regs;
            (*st).via_syscall = 0;
        }
        TRAP[0].store(0, Ordering::SeqCst);
        ACTIVE.store(1, Ordering::SeqCst);
        // SAFETY: `__fz_exec` saves the callee-saved registers and the stack pointer, runs
        // the snippet and comes back through `__fz_exec_return`, which restores them; the
        // snippet may clobber every other register (all declared) and only writes memory of
        // the exec pages and the stack below ours.
        unsafe {
            core::arch::asm!(
                "call {f}",
                f = sym __fz_exec,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                clobber_abi("C"),
                options(att_syntax),
            );
        }
        ACTIVE.store(0, Ordering::SeqCst);
        // SAFETY: written by the assembly on the way back; no snippet runs now.
        let (out, via, cb) = unsafe { ((*st).regs_out, (*st).via_syscall, (*st).cb) };
        let t = TRAP[0].load(Ordering::SeqCst);
        let ended = if via != 0 {
            Ended::Syscall(cb[1], cb[2])
        } else if t != 0 {
            self.stats.traps += 1;
            Ended::Trap(
                t - 1,
                TRAP[1].load(Ordering::SeqCst),
                TRAP[2].load(Ordering::SeqCst),
                TRAP[3].load(Ordering::SeqCst),
            )
        } else {
            Ended::Normally
        };
        self.noted(match ended {
            Ended::Normally => 0,
            Ended::Trap(v, ..) => -(v as i64) - 1000,
            Ended::Syscall(..) => 1,
        });
        (ended, out)
    }

    /// Random registers, with pointers where instructions take them.
    fn snippet_regs(&mut self) -> Regs {
        let mut g = Regs::default();
        for v in g.0.iter_mut() {
            *v = self.rng.edgy();
        }
        // Instructions write through %rdi (sgdt, a store): our exec data page, the far
        // pointers in the (read-only) exec page, or nowhere.
        g.0[r::RDI] = match self.rng.below(5) {
            // Past the frames (which may hold our kernel addresses: no far pointer to them).
            0..=1 => EXEC_DATA_VA + DATA_SCRATCH + self.rng.below(DATA_SCRATCH_LEN),
            2 => self.rng.pick(&[0, 1 << 63, 0xffff_82d0_8020_0000, EXEC_VA + OFF_FARPTR + 3]),
            _ => EXEC_VA + OFF_FARPTR,
        };
        g.0[r::RCX] = match self.rng.below(4) {
            0 => self.rng.pick(&[
                0xc000_0080u64,
                0xc000_0081,
                0xc000_0082,
                0xc000_0083,
                0xc000_0084,
                0xc000_0100,
                0xc000_0101,
                0xc000_0102,
                0xc000_0103,
                0x10,
                0x1b,
                0x174,
                0x175,
                0x176,
                0x277,
                0x3a,
                0x48,
                0x49,
            ]),
            _ => g.0[r::RCX],
        };
        g
    }

    /// One privileged, emulated or otherwise interesting instruction (64-bit encoding).
    fn insn(&mut self, c: &mut Code) {
        let n = self.rng.below(64) as u8;
        match self.rng.below(58) {
            0 => c.b(&[0xf4]),
            1 => c.b(&[0xfa]),
            2 => c.b(&[0xfb]),
            3 => c.b(&[self.rng.pick(&[0xec, 0xed, 0xee, 0xef, 0x6c, 0x6e])]),
            4 => c.b(&[self.rng.pick(&[0xe4, 0xe5, 0xe6, 0xe7]), n]),
            5 => c.b(&[0x0f, self.rng.pick(&[0x06, 0x08, 0x09])]),
            6 => c.b(&[0x0f, 0x01, self.rng.pick(&[0x17, 0x1f, 0x07, 0x0f, 0x3f, 0xe0, 0xf0])]),
            7 => c.b(&[0x0f, 0x00, self.rng.pick(&[0xc0, 0xc8, 0xd0, 0xd8, 0xe0, 0xe8])]),
            8 => c.b(&[0x0f, self.rng.pick(&[0x02, 0x03]), 0xc0]),
            9..=13 => {
                // mov %crN, %reg and back, some with REX.
                let cr = self.rng.pick(&[0u8, 2, 3, 4, 8, 1, 5]);
                let dir = self.rng.pick(&[0x20u8, 0x20, 0x22]);
                // Any register but %rsp: an emulated read into it would leave us without a
                // stack for the next trap.
                let reg = self.rng.pick(&[0u8, 1, 2, 3, 5, 6, 7]);
                if cr >= 8 {
                    c.b(&[0x44]);
                }
                c.b(&[0x0f, dir, 0xc0 | ((cr & 7) << 3) | reg])
            }
            14 => c.b(&[0x0f, self.rng.pick(&[0x21, 0x23]), 0xc0 | (self.rng.below(8) as u8) << 3]),
            15..=17 => c.b(&[0x0f, 0x32]),
            18..=19 => c.b(&[0x0f, 0x30]),
            20 => c.b(&[0x0f, self.rng.pick(&[0x31, 0x33, 0xa2])]),
            21 => c.b(&[
                0x0f,
                0x01,
                self.rng.pick(&[0xf9, 0xf8, 0xd0, 0xd1, 0xc8, 0xc9, 0xc1, 0xd9, 0xca, 0xcb]),
            ]),
            22..=24 => c.b(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2]),
            25 => c.b(&[self.rng.pick(&[0x0fu8, 0x48]), 0x0f, self.rng.pick(&[0x07, 0x35, 0x34])]),
            26..=28 => c.b(&[0xcd, self.rng.below(256) as u8]),
            29 => c.b(&[self.rng.pick(&[0xcc, 0xce, 0xf1])]),
            30 => c.b(&[0x0f, self.rng.pick(&[0x0b, 0xb9, 0xff]), 0xc0]),
            31 => c.b(&[0xf3, 0x48, 0x0f, 0xae, self.rng.pick(&[0xc0, 0xc8, 0xd0, 0xd8])]),
            32 => c.b(&[0xf0, 0x90]),
            33..=37 => {
                // A segment register load from %ax.
                let sreg = self.rng.pick(&[0xd8u8, 0xc0, 0xe0, 0xe8, 0xd0]);
                c.b(&[0x8e, sreg])
            }
            38 => c.b(&[0x50, 0x0f, self.rng.pick(&[0xa1, 0xa9])]),
            39..=41 => c.b(&[self.rng.pick(&[0xffu8, 0x48]), 0xff, self.rng.pick(&[0x2f, 0x1f])]),
            42..=43 => {
                // Single-step, direction or alignment flag set, then something that traps.
                let bit: u32 = self.rng.pick(&[0x100, 0x400, 0x4_0000, 0x4000]);
                c.prefixed(|c| {
                    c.b(&[0x9c, 0x48, 0x81, 0x0c, 0x24]).b(&bit.to_le_bytes()).b(&[0x9d]);
                    self.insn(c);
                })
            }
            44..=45 => {
                // std, then a trap or a hypercall: the hypervisor must not run with DF set.
                c.prefixed(|c| {
                    c.b(&[0xfd]);
                    self.insn(c);
                })
            }
            // A hypercall (its registers are generated for it and loaded just before it; it
            // ends the snippet).
            46..=49 => {
                self.syscall_emitted = true;
                c.syscall()
            }
            50 => {
                self.syscall_emitted = true;
                c.prefixed(|c| {
                    c.b(&[0xfd]).syscall();
                })
            }
            51 => {
                self.syscall_emitted = true;
                c.prefixed(|c| {
                    c.b(&[0x9c, 0x48, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d]).syscall();
                })
            }
            // A native iretq from a frame in the exec data page (ring 3 to ring 3: the
            // hypervisor does not see it); the frame comes back to the tail.
            52 => {
                let frame = [
                    EXEC_VA + OFF_BACK64,
                    u64::from(self.selector() as u16 | 3),
                    self.rng.next() & 0xcd5,
                    USER_STACK_TOP,
                    u64::from(FLAT_RING3_SS64),
                ];
                for (k, w) in frame.iter().enumerate() {
                    self.data_word(DATA_IRETQ + k as u64 * 8, *w);
                }
                c.movabs(4, EXEC_DATA_VA + DATA_IRETQ).b(&[0x48, 0xcf])
            }
            53 => c.b(&[0xd4, 0x00]),
            54 => c.b(&[0x48, 0x8b, 0x07]),
            55 => c.b(&[0x48, 0x89, 0x07]),
            _ => c.b(&[0x90]),
        };
    }

    /// Registers for a `syscall` in kernel mode: a call from the safe generators.
    fn hypercall_regs(&mut self, g: &mut Regs) {
        // Not `iret` (it would take its frame from our stack), and nothing that moves our
        // trap table, callbacks or kernel stack while the snippet may still trap.
        let keep = self.restore;
        let (mut n, mut a) = (nr::XEN_VERSION, [0; 5]);
        for _ in 0..8 {
            let (_, n2, a2) = self.gen_call(super::fuzz_calls::Ctx::Unchecked);
            let moved = self.restore & !keep & (restore::TRAPS | restore::CALLBACKS | restore::STACK);
            if n2 != nr::IRET && moved == 0 {
                (n, a) = (n2, a2);
                break;
            }
            self.restore &= !moved;
        }
        self.restore |= keep;
        g.0[r::RAX] = n;
        g.0[r::RDI] = a[0];
        g.0[r::RSI] = a[1];
        g.0[r::RDX] = a[2];
        g.0[r::R10] = a[3];
        g.0[r::R8] = a[4];
    }

    /// A snippet in guest kernel mode (64-bit, compat mode, or at the top of the canonical
    /// address space).
    pub fn exec_kernel(&mut self) {
        self.mem.scratch_reset();
        let mut g = self.snippet_regs();
        let mut c = Code::new();
        let kind = self.rng.below(10);
        self.far_pointers();
        let entry = match kind {
            0..=5 => {
                self.syscall_emitted = false;
                for _ in 0..self.rng.range(1, 3) {
                    self.insn(&mut c);
                    if self.syscall_emitted {
                        break;
                    }
                }
                EXEC_VA
            }
            6..=7 => {
                // Into compat mode (on a stack below 4 GiB: compat mode uses the low half of
                // %rsp), a few instructions there, back to 64-bit.
                c.movabs(4, COMPAT_STACK_TOP);
                c.movabs(7, EXEC_VA + OFF_FARPTR).b(&[0xff, 0x2f]);
                let mut cc = Code::new();
                for _ in 0..self.rng.range(1, 2) {
                    self.insn32(&mut cc);
                }
                cc.b(&[0xea])
                    .b(&((EXEC_VA + OFF_BACK64) as u32).to_le_bytes())
                    .b(&FLAT_RING3_CS64.to_le_bytes());
                self.emit(&self.mem.exec, OFF_COMPAT, &cc.bytes);
                EXEC_VA
            }
            _ => {
                // An instruction ending exactly at (or just before) 0x8000_0000_0000.
                let mut t = Code::new();
                match self.rng.below(6) {
                    0 => t.b(&[0x0f, 0x20, 0xc0 | self.rng.pick(&[0u8, 2 << 3, 3 << 3, 4 << 3])]),
                    1 => t.b(&[0x0f, 0x32]),
                    2 => t.b(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2]),
                    3 => t.syscall(),
                    4 => t.b(&[0x0f, 0x30]),
                    _ => t.b(&[0x90]),
                };
                if matches!(t.bytes.as_slice(), [0x0f, 0x05]) {
                    self.hypercall_regs(&mut g);
                    // %rax may still become a selector below: the hypercall loads its own.
                    t.load_hypercall_regs(&g);
                }
                if t.bytes == [0x0f, 0x30] {
                    g.0[r::RCX] = self.rng.pick(&[0xc000_0100, 0xc000_0101, 0xc000_0102]);
                }
                let slack = if self.rng.chance(1, 4) { self.rng.below(3) } else { 0 };
                // A fuzzed `update_va_mapping` or grant map may have put another frame (or
                // none) at TOP_VA: the code written below must be the code that runs there.
                let top = self.mem.top.mfn;
                let mapped = matches!(mm::lookup(TOP_VA), Ok(Some(e))
                    if pt::is_present(e) && pt::mfn(e) == top && e & (pt::RW | pt::NX | pt::USER) == pt::USER);
                if !mapped {
                    self.call(
                        "top page back",
                        nr::UPDATE_VA_MAPPING,
                        [TOP_VA, pt::make(top, CODE_PAGE), uvmf::INVLPG, 0, 0],
                    );
                }
                let at = 4096 - t.len() - slack;
                self.emit(&self.mem.top, at, &t.bytes);
                if slack > 0 {
                    self.emit(&self.mem.top, at + t.len(), &[0x90, 0x90, 0x90][..slack as usize]);
                }
                c.jmp_abs(TOP_VA + at);
                EXEC_VA
            }
        };
        // Segment loads take their selector from %ax (a hypercall its number).
        if self.rng.chance(1, 2) {
            g.0[r::RAX] = self.selector();
        }
        if core::mem::take(&mut self.syscall_emitted) {
            self.hypercall_regs(&mut g);
            c.load_hypercall_regs(&g);
        }
        c.tail();
        self.emit(&self.mem.exec, 0, &c.bytes);
        self.way_back(false);
        self.restore |= restore::SEGBASE | restore::FPU;
        let (ended, _) = self.run_snippet("snippet", entry, g);
        self.check_snippet(&ended);
    }

    /// The 64-bit way back at OFF_BACK64 (where compat code and native `iretq`s return):
    /// our tail in kernel mode; in user mode `syscall`, never a jump into kernel code (user
    /// mode on our own L4 could run it, and would then return into our kernel in user mode).
    fn way_back(&self, user: bool) {
        let mut c = Code::new();
        if user {
            c.b(&[0x0f, 0x05, 0x0f, 0x0b]);
        } else {
            c.tail();
        }
        self.emit(&self.mem.exec, OFF_BACK64, &c.bytes);
    }

    /// Oracles on how a snippet ended.
    fn check_snippet(&mut self, ended: &Ended) {
        if let Ended::Trap(_, _, _, cs) = *ended {
            // A guest trap is delivered with the guest's own selectors.
            let sel = cs & 0xffff;
            if sel & 3 == 0 && sel != KERNEL_CS && sel != u64::from(FLAT_RING3_CS32 & !3) {
                self.fail(format!("a trap was delivered with code selector {sel:#x}"));
            }
        }
    }

    /// One instruction in compat (32-bit) mode.
    fn insn32(&mut self, c: &mut Code) {
        match self.rng.below(12) {
            0..=2 => c.b(&[0x0f, 0x05]),
            3 => c.b(&[0x0f, 0x34]),
            4 => {
                let any = self.rng.below(256) as u8;
                c.b(&[0xcd, self.rng.pick(&[0x80u8, 0x82, 0x03, 0x2e, any])])
            }
            5 => c.b(&[0xf4]),
            6 => c.b(&[0xce]),
            7 => c.b(&[0xd4, 0x00]),
            8 => c.b(&[0x0f, 0x0b]),
            9 => c.b(&[0xcf]),
            10 => c.b(&[0x0f, 0x20, 0xc0]),
            _ => c.b(&[0x90]),
        };
    }

    /// Far pointers at OFF_FARPTR: m16:32 to compat code, then m16:64 variants.
    fn far_pointers(&mut self) {
        let any = self.selector() as u16;
        let sel = self.rng.pick(&[FLAT_RING3_CS32, FLAT_RING3_CS32, FLAT_RING3_CS32, any]);
        let mut fp = Vec::new();
        fp.extend_from_slice(&((EXEC_VA + OFF_COMPAT) as u32).to_le_bytes());
        fp.extend_from_slice(&sel.to_le_bytes());
        self.emit(&self.mem.exec, OFF_FARPTR, &fp);
    }

    /// A segment selector: the flat ones, the hypervisor's, the LDT, the guest GDT, anything.
    pub fn selector(&mut self) -> u64 {
        let s: u16 = match self.rng.below(10) {
            0 => 0,
            1 => self.rng.pick(&[FLAT_RING3_DS32, FLAT_RING3_CS64, FLAT_RING3_CS32, FLAT_RING3_SS64, 3]),
            2 => 0xe000 + (self.rng.below(8) as u16) * 8 + self.rng.below(4) as u16,
            3 => (self.rng.below(64) as u16) * 8 + 4 + 3,
            4 => (self.rng.below(32) as u16) * 8 + 3,
            5 => 0xfff8 | self.rng.below(8) as u16,
            _ => self.rng.next() as u16,
        };
        u64::from(s)
    }

    /// An `iret` hypercall with a generated frame: back to kernel mode (64-bit or compat), or
    /// into user mode.
    pub fn iret_op(&mut self) {
        self.mem.scratch_reset();
        self.stats.irets += 1;
        let to_user = self.rng.chance(1, 4);
        let compat = self.rng.chance(1, 5);
        let (cs, rip) = if to_user {
            self.user_program(compat);
            let cs = if compat { FLAT_RING3_CS32 } else { FLAT_RING3_CS64 };
            (u64::from(cs), EXEC_VA + OFF_USER)
        } else {
            let cs =
                (if compat { FLAT_RING3_CS32 & !3 } else { FLAT_KERNEL_CS & !3 }) | self.rng.below(3) as u16;
            // A compat-mode return must land below 4 GiB; sometimes it does not.
            let rip = if compat && self.rng.chance(9, 10) {
                let mut back = Code::new();
                back.b(&[0xea])
                    .b(&((EXEC_VA + OFF_BACK64) as u32).to_le_bytes())
                    .b(&FLAT_RING3_CS64.to_le_bytes());
                self.emit(&self.mem.exec, OFF_COMPAT, &back.bytes);
                EXEC_VA + OFF_COMPAT
            } else {
                __fz_exec_return as *const () as u64
            };
            (u64::from(cs), rip)
        };
        let settable: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;
        let mut rflags = 2 | (self.rng.next() & settable);
        if self.rng.chance(1, 8) {
            rflags |= self.rng.next() & !settable;
        }
        if self.rng.chance(1, 2) {
            rflags |= 0x200;
        }
        if self.rng.chance(3, 4) {
            rflags &= !0x100;
        }
        // Kernel mode needs a usable stack for anything delivered at the landing; user mode
        // gets its bounces on the kernel stack.
        let rsp = if to_user {
            if self.rng.chance(1, 4) {
                self.rng.edgy()
            } else {
                USER_STACK_TOP
            }
        } else if !compat && rflags & 0x300 == 0 && self.rng.chance(1, 3) {
            // Our landing never touches the stack and nothing may be delivered there (no TF,
            // events masked): any stack pointer.
            self.rng.edgy()
        } else if compat {
            COMPAT_STACK_TOP
        } else {
            kstack_top() - 1024
        };
        let ss = self.rng.pick(&[
            u64::from(FLAT_KERNEL_SS),
            u64::from(FLAT_KERNEL_SS & !3),
            3,
            u64::from(FLAT_RING3_SS64),
        ]);
        let flags = match self.rng.below(4) {
            0 => vgcf::IN_SYSCALL,
            1 => self.rng.edgy() & !vgcf::IN_SYSCALL,
            _ => 0,
        };
        self.way_back(to_user);
        let frame = [flags, rip, cs, rflags, rsp, ss];
        for (k, w) in frame.iter().enumerate() {
            self.data_word(DATA_FRAME + k as u64 * 8, *w);
        }
        if to_user {
            self.prepare_user_mode();
            self.stats.user += 1;
        }
        let mut c = Code::new();
        c.movabs(4, EXEC_DATA_VA + DATA_FRAME);
        c.jmp_abs(iret_stub());
        self.emit(&self.mem.exec, 0, &c.bytes);
        let g = self.snippet_regs();
        self.restore |= restore::SEGBASE | restore::FPU | restore::STACK | restore::CALLBACKS;
        let (ended, _) = self.run_snippet("iret", EXEC_VA, g);
        self.check_snippet(&ended);
    }

    /// The user program at OFF_USER: a few instructions, then `syscall` (the way back).
    fn user_program(&mut self, compat: bool) {
        let mut u = Code::new();
        for _ in 0..self.rng.range(0, 2) {
            if compat {
                self.insn32(&mut u);
            } else {
                self.insn(&mut u);
            }
        }
        u.b(&[0x0f, 0x05]);
        self.emit(&self.mem.exec, OFF_USER, &u.bytes);
    }

    /// Before entering user mode: our kernel stack and syscall callback are in place, and the
    /// user base is our own L4 (user mode then runs on our kernel tables) or a user L4 built
    /// from the pool that maps the exec pages. (Without a user base, Xen crashes a guest that
    /// returns to user mode.)
    fn prepare_user_mode(&mut self) {
        self.restore_state(restore::STACK | restore::CALLBACKS);
        if self.rng.chance(1, 2) || !self.build_user_l4() {
            let l4 = self.mem.real_l4.0;
            if self.ext1("user base: our L4", mmuext::NEW_USER_BASEPTR, l4, 0) != 0 {
                self.fail(format!("NEW_USER_BASEPTR to our own L4 {l4:#x} failed"));
            }
        }
    }

    /// A user address space from four pool pages: L4[0] -> L3[0] -> L2 -> L1 mapping the
    /// exec page (read-only, executable) and the exec data page (writable), plus odd entries.
    /// Returns whether it became the user base.
    fn build_user_l4(&mut self) -> bool {
        let mut pages = Vec::new();
        for _ in 0..4 {
            match self.rw_pool_page() {
                Some(i) if !pages.contains(&i) => pages.push(i),
                _ => return false,
            }
        }
        let [l1, l2, l3, l4] = [pages[0], pages[1], pages[2], pages[3]];
        let (m1, m2, m3) = (self.mem.pool[l1].mfn, self.mem.pool[l2].mfn, self.mem.pool[l3].mfn);
        let code = CODE_PAGE;
        let (exec, data) = (self.mem.exec.mfn, self.mem.exec_data.mfn);
        let ok = self.mem.write_entry(l1, pt::table_index(EXEC_VA, 1), pt::make(exec, code))
            && self.mem.write_entry(l1, pt::table_index(EXEC_DATA_VA, 1), pt::make(data, pt::PAGE_KERNEL))
            && self.mem.write_entry(l2, pt::table_index(EXEC_VA, 2), pt::make(m1, pt::PAGE_TABLE))
            && self.mem.write_entry(l3, pt::table_index(EXEC_VA, 3), pt::make(m2, pt::PAGE_TABLE))
            && self.mem.write_entry(l4, pt::table_index(EXEC_VA, 4), pt::make(m3, pt::PAGE_TABLE));
        if !ok {
            return false;
        }
        if self.rng.chance(1, 3) {
            let idx = self.rng.range(2, 511) as usize;
            let e = self.pte();
            self.mem.write_entry(l1, idx, e);
        }
        for &i in &pages {
            let p = self.mem.pool[i];
            self.call(
                "user L4: read-only",
                nr::UPDATE_VA_MAPPING,
                [p.va, pt::make(p.mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG, 0, 0],
            );
        }
        let l4m = self.mem.pool[l4].mfn.0;
        self.ext1("user base: pool L4", mmuext::NEW_USER_BASEPTR, l4m, 0) == 0
    }

    /// Into user mode through `iret` with a user program, and back through `syscall` or a
    /// trap.
    pub fn user_excursion(&mut self) {
        self.mem.scratch_reset();
        self.stats.user += 1;
        let compat = self.rng.chance(1, 6);
        self.user_program(compat);
        self.prepare_user_mode();
        let cs = if compat { FLAT_RING3_CS32 } else { FLAT_RING3_CS64 };
        let mut rflags = 0x202u64;
        if self.rng.chance(1, 6) {
            rflags |= self.rng.pick(&[0x100, 0x400, 0x4_0000, 0x4000]);
        }
        if self.rng.chance(1, 3) {
            rflags &= !0x200;
        }
        self.way_back(true);
        let frame =
            [0, EXEC_VA + OFF_USER, u64::from(cs), rflags, USER_STACK_TOP, u64::from(FLAT_RING3_SS64)];
        for (k, w) in frame.iter().enumerate() {
            self.data_word(DATA_FRAME + k as u64 * 8, *w);
        }
        let mut c = Code::new();
        c.movabs(4, EXEC_DATA_VA + DATA_FRAME);
        c.jmp_abs(iret_stub());
        self.emit(&self.mem.exec, 0, &c.bytes);
        let mut g = self.snippet_regs();
        if self.rng.chance(1, 2) {
            self.hypercall_regs(&mut g);
        }
        self.restore |= restore::SEGBASE | restore::FPU;
        let (ended, _) = self.run_snippet("user mode", EXEC_VA, g);
        match ended {
            Ended::Syscall(rip, ucs) => {
                let want = EXEC_VA + OFF_USER;
                // A native `iretq` in the program (ring 3 to ring 3) returns to the way back,
                // whose `syscall` ends the snippet there (under QEMU 7.2 it used to fault
                // instead: the SMAP quirk the hypervisor now handles).
                let way_back = EXEC_VA + OFF_BACK64 + 2;
                if ucs & 0xffff != u64::from(cs) || (rip != way_back && (rip < want || rip > want + 64)) {
                    self.fail(format!("user-mode syscall bounced with rip {rip:#x} cs {ucs:#x} (the program is at {want:#x}, cs {cs:#x})"));
                }
            }
            Ended::Normally => {
                self.fail("the user program returned to kernel code without a syscall or a trap".into());
            }
            Ended::Trap(..) => self.check_snippet(&ended),
        }
    }

    /// Puts back vCPU state calls may have changed.
    pub fn restore_state(&mut self, bits: u32) {
        let mut bad = Vec::new();
        if bits & restore::TRAPS != 0 && traps::init().is_err() {
            bad.push("trap table");
        }
        if bits & restore::CALLBACKS != 0 {
            let (event, failsafe) = traps::callback_entries();
            if hypercall::set_callbacks(event, failsafe, 0) != 0 {
                bad.push("callbacks");
            }
            let reg = |t, a, f| {
                let cb = CallbackRegister { type_: t, flags: f, _pad: 0, address: a };
                hypercall::callback_op(cbop::REGISTER, &cb)
            };
            if reg(callback_type::SYSCALL, __fz_syscall_cb as *const () as u64, callbackf::MASK_EVENTS) != 0 {
                bad.push("syscall callback");
            }
            let _ = reg(callback_type::SYSCALL32, 0, 0);
            let _ = reg(callback_type::SYSENTER, 0, 0);
        }
        if bits & restore::STACK != 0 && hypercall::stack_switch(FLAT_KERNEL_SS, kstack_top()) != 0 {
            bad.push("kernel stack");
        }
        if bits & restore::SEGBASE != 0 {
            for which in [0u64, 1, 2] {
                if hypercall::hypercall5(nr::SET_SEGMENT_BASE, which, 0, 0, 0, 0) != 0 {
                    bad.push("segment base");
                }
            }
        }
        if bits & restore::FPU != 0 && hypercall::hypercall5(nr::FPU_TASKSWITCH, 0, 0, 0, 0, 0) != 0 {
            bad.push("fpu_taskswitch");
        }
        if bits & restore::GDT != 0 {
            let list = [0u64; 1];
            let _ = hypercall::hypercall5(nr::SET_GDT, list.as_ptr() as u64, 0, 0, 0, 0);
        }
        if bits & restore::BASEPTR != 0 {
            self.restore_baseptr();
        }
        if bits & restore::CPU != 0 {
            // Disarm every breakpoint, IOPL 0, no architectural IOPL (the fuzzer starts so).
            if hypercall::hypercall5(nr::SET_DEBUGREG, 7, 0, 0, 0, 0) != 0 {
                bad.push("debug registers");
            }
            let iopl = hypercall_abi::physdev::PhysdevSetIopl { iopl: 0 };
            let set_iopl = u64::from(hypercall_abi::physdev::op::SET_IOPL);
            let _ = hypercall::hypercall5(nr::PHYSDEV_OP, set_iopl, hypercall::ptr(&iopl), 0, 0, 0);
            let (cmd, ty) = (
                hypercall_abi::xen::vmasst::CMD_DISABLE,
                hypercall_abi::xen::vmasst::TYPE_ARCHITECTURAL_IOPL,
            );
            let _ = hypercall::hypercall5(nr::VM_ASSIST, u64::from(cmd), u64::from(ty), 0, 0, 0);
        }
        for b in bad {
            self.fail(format!("cannot put back our {b}"));
        }
    }
}

/// The `iret` stub of the hypercall page (jumped to, never called).
fn iret_stub() -> u64 {
    extern "C" {
        static hypercall_page: u8;
    }
    // Only the address of the linker symbol is taken.
    core::ptr::addr_of!(hypercall_page) as u64 + nr::IRET * 32
}
