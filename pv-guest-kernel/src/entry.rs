//! Kernel entry: the `_start` symbol, the Xen ELF notes that tell the domain builder how to
//! load us, the hypercall page, and the boot stack. A kernel binary invokes [`pv_kernel!`]
//! once with its main function.

/// Where the kernel is linked and the builder starts the bootstrap mapping
/// (`XEN_ELFNOTE_VIRT_BASE`; pfn `p` is at `VIRT_BASE + p * 4096`). Must match guest.ld.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

/// Size of the boot stack the entry code switches to (the builder's stack is one page). Below
/// it lies a guard page that the runtime unmaps at boot, so an overflow faults (and the
/// hypervisor crashes the domain with a reason) instead of silently overwriting what the
/// linker put below.
pub const BOOT_STACK_SIZE: usize = 128 * 1024;
/// Size of the bootstrap heap carved out of .bss (a kernel may add a region of its own
/// memory later: [`crate::heap::grow`]).
pub const HEAP_SIZE: usize = 2 << 20;

/// The bootstrap heap's backing memory (a kernel binary's .bss, handed to the allocator once).
#[repr(C, align(4096))]
pub struct HeapArea(pub core::cell::UnsafeCell<[u8; HEAP_SIZE]>);
// SAFETY: the area is only handed to the allocator once, at entry, and never touched again.
unsafe impl Sync for HeapArea {}

/// Defines the kernel's entry point, Xen ELF notes, hypercall page and boot stack, and calls
/// `$main(&StartInfo)` on a 64 KiB stack. `$guest_os` names the kernel in the GUEST_OS note.
#[macro_export]
macro_rules! pv_kernel {
    ($main:path, $guest_os:literal) => {
        core::arch::global_asm!(
            concat!(r#"
            .section .note.Xen, "a", @note
            .macro XEN_NOTE type, desc_start, desc_end
                .balign 4
                .long 4
                .long \desc_end - \desc_start
                .long \type
                .asciz "Xen"
                .balign 4
            .endm
            XEN_NOTE 6, 60f, 61f
60:         .asciz ""#, $guest_os, r#""
61:
            XEN_NOTE 5, 62f, 63f
62:         .asciz "xen-3.0"
63:
            XEN_NOTE 8, 64f, 65f
64:         .asciz "generic"
65:
            XEN_NOTE 3, 66f, 67f
66:         .quad {virt_base}
67:
            XEN_NOTE 4, 68f, 69f
68:         .quad 0
69:
            XEN_NOTE 1, 70f, 71f
70:         .quad _start
71:
            XEN_NOTE 2, 72f, 73f
72:         .quad hypercall_page
73:
            XEN_NOTE 9, 74f, 75f
74:         .asciz "yes"
75:
            .section .text.hypercall_page, "ax"
            .balign 4096
            .globl hypercall_page
hypercall_page:
            .fill 4096, 1, 0xc3

            .section .text.entry, "ax"
            .globl _start
_start:
            /* rsi = start_info (virtual). Switch to our own stack; keep rsp % 16 == 8
               at the call as the ABI requires. */
            lea __pv_boot_stack_top(%rip), %rsp
            mov %rsi, %rdi
            call {entry}
1:          hlt
            jmp 1b

            .section .bss.boot_stack, "aw", @nobits
            .balign 4096
            .globl __pv_stack_guard
__pv_stack_guard:
            .skip 4096
__pv_boot_stack:
            .skip {stack}
__pv_boot_stack_top:
            .previous
            "#),
            stack = const $crate::entry::BOOT_STACK_SIZE,
            virt_base = const $crate::entry::VIRT_BASE,
            entry = sym __pv_kernel_entry,
            options(att_syntax)
        );

        #[global_allocator]
        static __PV_HEAP: $crate::heap::Global = $crate::heap::Global;
        static __PV_HEAP_AREA: $crate::entry::HeapArea =
            $crate::entry::HeapArea(core::cell::UnsafeCell::new([0; $crate::entry::HEAP_SIZE]));

        extern "C" fn __pv_kernel_entry(si: *const $crate::start_info::StartInfo) -> ! {
            // SAFETY: runs once, first thing at entry; the area is used by nothing else.
            unsafe { $crate::heap::HEAP.init_boot(__PV_HEAP_AREA.0.get() as *mut u8, $crate::entry::HEAP_SIZE) };
            let si_va = si as u64;
            // SAFETY: the domain builder passes start_info's virtual address in %rsi and maps it.
            let si = unsafe { $crate::start_info::take(si) };
            $crate::runtime_init(&si, si_va);
            $main(&si);
            $crate::hypercall::shutdown(hypercall_abi::sched::shutdown::POWEROFF)
        }

        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::println!("PANIC: {}", info);
            $crate::hypercall::shutdown(hypercall_abi::sched::shutdown::CRASH)
        }
    };
}
