//! Exceptions, PV style: a virtual IDT registered with `set_trap_table`, entry stubs that turn
//! the hypervisor's bounce frame into a [`TrapFrame`] for Rust handlers, and the way back
//! through the `iret` hypercall. The event and failsafe callbacks share the stubs.
//!
//! The bounce frame on the kernel stack is, from low to high, `RCX, R11, [error code], RIP,
//! CS (saved upcall mask in bits 32-39), RFLAGS, RSP, SS`. A stub pops RCX and R11 (leaving a
//! hardware-shaped frame), pushes a 0 error code if the CPU gave none and the vector number,
//! saves every general register and the FPU/SSE state (the interrupted code may be using
//! them; Rust code here may clobber them), and calls the dispatcher on a 16-byte-aligned
//! stack. On return it restores everything, replaces vector and error code by the `iret`
//! hypercall's `flags` word (0) and jumps to the `iret` stub, which pushes RAX, R11 and RCX
//! and enters the hypervisor; it restores those and RIP, CS, RFLAGS, RSP, SS, and sets the
//! upcall mask from the saved RFLAGS.IF. Handlers may change any saved register, e.g. move
//! RIP past a faulting instruction.
//!
//! As mini-os, the table covers vectors 0-19 except NMI (2), #DF (8) and #MC (18); `int3`,
//! `into` and `bound` may be raised from any ring (DPL 3). Every entry masks events on entry
//! (interrupt-gate semantics, as Linux asks for its exception gates), so a handler's view of
//! `cr2` cannot be disturbed by a nested fault in an event handler.

use hypercall_abi::xen::{trap_flags, TrapInfo, FLAT_KERNEL_CS};

/// The registers of the interrupted context, as the entry stubs save them (lowest address
/// first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Exception vector, or [`EVENT_VECTOR`] for the event callback.
    pub vector: u64,
    /// The CPU's error code (0 for vectors without one).
    pub error_code: u64,
    pub rip: u64,
    /// Code selector in bits 0-15, the saved upcall mask in bits 32-39.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

/// The `vector` of a frame built by the event callback.
pub const EVENT_VECTOR: u64 = u64::MAX;

impl TrapFrame {
    /// The code selector.
    pub fn selector(&self) -> u16 {
        self.cs as u16
    }

    /// The upcall mask at the time of the interruption.
    pub fn saved_upcall_mask(&self) -> u8 {
        (self.cs >> 32) as u8
    }

    /// True if the interrupted code was the guest kernel (the hypervisor clears the RPL bits
    /// of CS for a kernel-mode context).
    pub fn from_kernel(&self) -> bool {
        self.cs & 3 == 0
    }
}

/// Vectors in our trap table with their DPL.
pub const TRAP_VECTORS: [(u8, u8); 17] = [
    (0, 0),
    (1, 0),
    (3, 3),
    (4, 3),
    (5, 3),
    (6, 0),
    (7, 0),
    (9, 0),
    (10, 0),
    (11, 0),
    (12, 0),
    (13, 0),
    (14, 0),
    (15, 0),
    (16, 0),
    (17, 0),
    (19, 0),
];

/// Highest vector the stubs cover, plus one.
pub const NR_TRAP_VECTORS: usize = 20;

/// True if the CPU pushes an error code for `vector`.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17)
}

/// Mnemonic of an exception vector.
pub fn name(vector: u64) -> &'static str {
    const N: [&str; 20] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP",
        "#PF", "#15", "#MF", "#AC", "#MC", "#XM",
    ];
    match vector {
        EVENT_VECTOR => "event",
        v => N.get(v as usize).copied().unwrap_or("#??"),
    }
}

/// The `set_trap_table` array for stubs at `entry(vector)`, terminated by a zero entry. The
/// selector is FLAT_KERNEL_CS with RPL 0, as guests write it; the hypervisor raises the RPL.
pub fn build_table(entry: impl Fn(u8) -> u64) -> [TrapInfo; TRAP_VECTORS.len() + 1] {
    let mut t = [TrapInfo::default(); TRAP_VECTORS.len() + 1];
    for (slot, &(vector, dpl)) in t.iter_mut().zip(TRAP_VECTORS.iter()) {
        *slot = TrapInfo {
            vector,
            flags: dpl | trap_flags::DISABLES_EVENTS,
            cs: FLAT_KERNEL_CS & !3,
            _pad: 0,
            address: entry(vector),
        };
    }
    t
}

/// A handler for one vector. It may edit the frame (e.g. `rip`) before the context resumes.
pub type TrapHandler = fn(&mut TrapFrame);

#[cfg(not(test))]
mod kernel {
    use super::*;
    use crate::hypercall::{self, check};
    use hypercall_abi::sched::shutdown;
    use hypercall_abi::Errno;
    use spin::Mutex;

    core::arch::global_asm!(
        r#"
        .pushsection .text.pv_entry, "ax"

        .macro PV_SAVE_REGS
            push %rax
            push %rbx
            push %rcx
            push %rdx
            push %rsi
            push %rdi
            push %rbp
            push %r8
            push %r9
            push %r10
            push %r11
            push %r12
            push %r13
            push %r14
            push %r15
        .endm

        .macro PV_TRAP_NOERR vec
        __pv_trap_\vec:
            pop %rcx
            pop %r11
            pushq $0
            pushq $\vec
            jmp __pv_trap_common
        .endm

        .macro PV_TRAP_ERR vec
        __pv_trap_\vec:
            pop %rcx
            pop %r11
            pushq $\vec
            jmp __pv_trap_common
        .endm

        PV_TRAP_NOERR 0
        PV_TRAP_NOERR 1
        PV_TRAP_NOERR 3
        PV_TRAP_NOERR 4
        PV_TRAP_NOERR 5
        PV_TRAP_NOERR 6
        PV_TRAP_NOERR 7
        PV_TRAP_NOERR 9
        PV_TRAP_ERR 10
        PV_TRAP_ERR 11
        PV_TRAP_ERR 12
        PV_TRAP_ERR 13
        PV_TRAP_ERR 14
        PV_TRAP_NOERR 15
        PV_TRAP_NOERR 16
        PV_TRAP_ERR 17
        PV_TRAP_NOERR 19

        __pv_trap_common:
            PV_SAVE_REGS
            mov %rsp, %rdi
            mov %rsp, %rbx
            and $-16, %rsp
            sub $512, %rsp
            fxsave64 (%rsp)
            cld
            call {trap_dispatch}
        __pv_frame_return:
            fxrstor64 (%rsp)
            mov %rbx, %rsp
            pop %r15
            pop %r14
            pop %r13
            pop %r12
            pop %r11
            pop %r10
            pop %r9
            pop %r8
            pop %rbp
            pop %rdi
            pop %rsi
            pop %rdx
            pop %rcx
            pop %rbx
            pop %rax
            /* Vector and error code out; the iret hypercall's flags word (0) in. */
            add $16, %rsp
            pushq $0
            jmp hypercall_page + 23 * 32

        .globl __pv_event_callback
        __pv_event_callback:
            pop %rcx
            pop %r11
            pushq $0
            pushq $-1
            PV_SAVE_REGS
            mov %rsp, %rdi
            mov %rsp, %rbx
            and $-16, %rsp
            sub $512, %rsp
            fxsave64 (%rsp)
            cld
            call {event_upcall}
            jmp __pv_frame_return

        .globl __pv_failsafe_callback
        __pv_failsafe_callback:
            mov %rsp, %rdi
            and $-16, %rsp
            cld
            call {failsafe}
            ud2

        .popsection

        .pushsection .rodata.pv_trap_entries, "a"
        .balign 8
        .globl __pv_trap_entries
        __pv_trap_entries:
            .quad __pv_trap_0, __pv_trap_1, 0, __pv_trap_3, __pv_trap_4
            .quad __pv_trap_5, __pv_trap_6, __pv_trap_7, 0, __pv_trap_9
            .quad __pv_trap_10, __pv_trap_11, __pv_trap_12, __pv_trap_13, __pv_trap_14
            .quad __pv_trap_15, __pv_trap_16, __pv_trap_17, 0, __pv_trap_19
        .popsection
        "#,
        trap_dispatch = sym trap_dispatch,
        event_upcall = sym crate::events::upcall,
        failsafe = sym failsafe,
        options(att_syntax)
    );

    extern "C" {
        static __pv_trap_entries: [u64; NR_TRAP_VECTORS];
        fn __pv_event_callback();
        fn __pv_failsafe_callback();
    }

    static HANDLERS: Mutex<[Option<TrapHandler>; NR_TRAP_VECTORS]> = Mutex::new([None; NR_TRAP_VECTORS]);

    /// Addresses of the event and failsafe callback stubs, for `set_callbacks`.
    pub fn callback_entries() -> (u64, u64) {
        (__pv_event_callback as *const () as u64, __pv_failsafe_callback as *const () as u64)
    }

    /// The stub for `vector` (0 if the table does not cover it).
    pub fn entry(vector: u8) -> u64 {
        // SAFETY: `__pv_trap_entries` is the read-only table emitted by the asm above.
        let t = unsafe { &__pv_trap_entries };
        t.get(vector as usize).copied().unwrap_or(0)
    }

    /// Registers the trap table with the hypervisor.
    pub fn init() -> Result<(), Errno> {
        let table = build_table(entry);
        check(hypercall::set_trap_table(&table)).map(|_| ())
    }

    /// Clears the whole virtual IDT (`set_trap_table(NULL)`): every exception then crashes
    /// the domain in the hypervisor. For tests of exactly that.
    pub fn clear_table() -> Result<(), Errno> {
        check(hypercall::set_trap_table(&[])).map(|_| ())
    }

    /// Installs (or with `None` removes) the handler of `vector`; returns the previous one.
    /// Without a handler, a trap prints the fault and crashes the domain.
    pub fn set_handler(vector: u8, h: Option<TrapHandler>) -> Option<TrapHandler> {
        let mut t = HANDLERS.lock();
        t.get_mut(vector as usize).and_then(|slot| core::mem::replace(slot, h))
    }

    /// The faulting address of the last #PF: from vcpu_info once shared_info is mapped, else
    /// by reading %cr2, which the hypervisor emulates for PV kernels.
    pub fn cr2() -> u64 {
        if let Some(v) = crate::shared::vcpu0() {
            return v.cr2.load(core::sync::atomic::Ordering::SeqCst);
        }
        let cr2: u64;
        // SAFETY: `mov %cr2` faults in ring 3 and the hypervisor emulates it for PV kernels
        // (it reads vcpu_info.arch.cr2); it has no other effect.
        unsafe { core::arch::asm!("mov %cr2, {}", out(reg) cr2, options(att_syntax, nomem, nostack)) };
        cr2
    }

    extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
        // Copy the handler out so the lock is not held while it runs.
        let h = HANDLERS.lock().get(frame.vector as usize).copied().flatten();
        match h {
            Some(h) => h(frame),
            None => fatal(frame),
        }
    }

    /// The default handler: reports the fault and crashes the domain.
    pub fn fatal(frame: &TrapFrame) -> ! {
        let cr2 = if frame.vector == 14 { cr2() } else { 0 };
        crate::println!(
            "trap: unhandled {} (vector {}) at rip {:#x}, error {:#x}, cr2 {:#x}, rsp {:#x}, cs {:#x}",
            name(frame.vector),
            frame.vector,
            frame.rip,
            frame.error_code,
            cr2,
            frame.rsp,
            frame.cs
        );
        hypercall::shutdown(shutdown::CRASH)
    }

    /// The failsafe callback: the hypervisor could not load our segment registers on a
    /// return. Frame: RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS.
    extern "C" fn failsafe(frame: &[u64; 11]) -> ! {
        crate::println!(
            "trap: failsafe callback at rip {:#x} (ds {:#x} es {:#x} fs {:#x} gs {:#x})",
            frame[6],
            frame[2],
            frame[3],
            frame[4],
            frame[5]
        );
        hypercall::shutdown(shutdown::CRASH)
    }
}

#[cfg(not(test))]
pub use kernel::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_mini_os_shaped() {
        let t = build_table(|v| 0x1000 + u64::from(v) * 16);
        assert_eq!(t.last().unwrap().address, 0, "terminated by a zero entry");
        let vectors: Vec<u8> = t[..t.len() - 1].iter().map(|e| e.vector).collect();
        assert!(!vectors.contains(&2) && !vectors.contains(&8) && !vectors.contains(&18));
        assert_eq!(vectors.len(), 17);
        for e in &t[..t.len() - 1] {
            assert_eq!(e.cs, 0xe030);
            assert_eq!(e.address, 0x1000 + u64::from(e.vector) * 16);
            assert_ne!(e.flags & trap_flags::DISABLES_EVENTS, 0);
            let dpl = e.flags & trap_flags::DPL_MASK;
            assert_eq!(dpl, if matches!(e.vector, 3..=5) { 3 } else { 0 });
        }
    }

    #[test]
    fn frame_accessors() {
        let f = TrapFrame { cs: 0xe030 | (1 << 32), vector: 14, ..Default::default() };
        assert_eq!((f.selector(), f.saved_upcall_mask(), f.from_kernel()), (0xe030, 1, true));
        let u = TrapFrame { cs: 0xe033, ..Default::default() };
        assert!(!u.from_kernel());
        assert_eq!(name(14), "#PF");
        assert_eq!(name(EVENT_VECTOR), "event");
        assert_eq!(name(99), "#??");
        assert!(has_error_code(14) && has_error_code(13) && !has_error_code(6) && !has_error_code(3));
    }
}
