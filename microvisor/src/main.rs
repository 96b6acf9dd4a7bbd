//! The microvisor kernel binary: the x86_64 architecture layer plus the glue that hands the
//! machine to the core logic of the `microvisor` library.
#![no_std]
#![no_main]

use kernel_rt as _;

mod arch;

use arch::x86_64::{cpu, serial};

/// Rust entry from `boot.rs`, on the boot stack with the early page tables.
pub extern "C" fn kmain(mb_magic: u32, mb_info: u32) -> ! {
    serial::init();
    serial::write_bytes(b"(XEN) microvisor booting\n");
    let _ = (mb_magic, mb_info);
    cpu::qemu_exit(0x10)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = info;
    serial::write_bytes(b"(XEN) PANIC\n");
    cpu::qemu_exit(0x12)
}
