//! The Multiboot v1 entry: from 32-bit protected mode (as QEMU or GRUB leave us) to 64-bit long
//! mode on the high-half mapping, then into Rust.
//!
//! The image is linked at `HV_VIRT_BASE + phys` but starts executing at its physical address,
//! so the 32-bit code only uses relative jumps and computes physical addresses of its data as
//! `symbol - HV_VIRT_BASE`. The early page tables map the first GiB twice, identity (to survive
//! the switch to paging) and at `HV_VIRT_BASE`; `paging::init` replaces them with the real
//! address space.

use core::arch::global_asm;
use microvisor::x86::{cr0, cr4, efer, msr};

/// Where the image's virtual addresses start: physical address 0 maps here.
pub const HV_VIRT_BASE: u64 = 0xffff_82d0_8000_0000;
/// Size of the boot (and hypervisor) stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .set HV_VIRT_BASE, {hv_virt_base}
    .set MB_MAGIC, 0x1BADB002
    /* bit 0: page-align modules, bit 1: memory map, bit 16: a.out kludge addresses */
    .set MB_FLAGS, 0x00010003

    .section .multiboot_header, "a"
    .balign 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header - HV_VIRT_BASE      /* header_addr */
    .long __image_start - HV_VIRT_BASE  /* load_addr */
    .long __load_end - HV_VIRT_BASE     /* load_end_addr */
    .long __bss_end - HV_VIRT_BASE      /* bss_end_addr */
    .long _start32 - HV_VIRT_BASE       /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .globl _start32
_start32:
    cli
    cld
    /* eax = Multiboot magic, ebx = physical address of the Multiboot info. */
    mov %eax, %edi
    mov %ebx, %esi
    mov $(boot_stack_top - HV_VIRT_BASE), %esp

    /* Zero .bss (the loader may not have); it holds the stack, so nothing is pushed yet. */
    mov %edi, %ebp
    mov $(__load_end - HV_VIRT_BASE), %edi
    mov $(__bss_end - HV_VIRT_BASE), %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %ebp, %edi

    /* PD: 512 x 2 MiB pages covering physical 0..1 GiB (present, writable, PS). */
    mov $(boot_pd - HV_VIRT_BASE), %ebx
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%ebx,%ecx,8)
    movl $0, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 1b

    /* Identity: PML4[0] -> PDPT_LOW[0] -> PD. High: PML4[261] -> PDPT_HIGH[322] -> PD. */
    mov $(boot_pd - HV_VIRT_BASE + 3), %eax
    mov %eax, (boot_pdpt_low - HV_VIRT_BASE)
    mov %eax, (boot_pdpt_high - HV_VIRT_BASE + 322 * 8)
    mov $(boot_pdpt_low - HV_VIRT_BASE + 3), %eax
    mov %eax, (boot_pml4 - HV_VIRT_BASE)
    mov $(boot_pdpt_high - HV_VIRT_BASE + 3), %eax
    mov %eax, (boot_pml4 - HV_VIRT_BASE + 261 * 8)

    /* CR4: PAE | OSFXSR | OSXMMEXCPT (libcore uses SSE everywhere). */
    mov %cr4, %eax
    or ${cr4_boot}, %eax
    mov %eax, %cr4
    mov $(boot_pml4 - HV_VIRT_BASE), %eax
    mov %eax, %cr3

    /* EFER: LME | NXE | SCE. */
    mov ${msr_efer}, %ecx
    rdmsr
    or ${efer_boot}, %eax
    wrmsr

    /* CR0: PG | WP | NE | MP | PE, EM and TS clear. */
    mov %cr0, %eax
    and ${cr0_clear}, %eax
    or ${cr0_boot}, %eax
    mov %eax, %cr0

    lgdt (boot_gdt_ptr - HV_VIRT_BASE)
    ljmpl $0x08, $(long_mode_low - HV_VIRT_BASE)

    .code64
long_mode_low:
    movabs $long_mode_high, %rax
    jmp *%rax

long_mode_high:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    /* edi = magic, esi = Multiboot info (physical), zero-extended by the 32-bit moves. */
    mov %edi, %edi
    mov %esi, %esi
    call {kmain}
2:  cli
    hlt
    jmp 2b

    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit ring-0 code */
    .quad 0x00cf92000000ffff    /* 0x10: ring-0 data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt - HV_VIRT_BASE

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096
    .globl boot_stack_bottom, boot_stack_top
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    .previous
"#,
    hv_virt_base = const HV_VIRT_BASE,
    cr4_boot = const (cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT) as u32,
    msr_efer = const msr::EFER,
    efer_boot = const (efer::LME | efer::NXE | efer::SCE) as u32,
    cr0_clear = const !(cr0::EM | cr0::TS) as u32,
    cr0_boot = const (cr0::PG | cr0::WP | cr0::NE | cr0::MP | cr0::PE) as u32,
    stack_size = const BOOT_STACK_SIZE,
    kmain = sym crate::kmain,
    options(att_syntax)
);
