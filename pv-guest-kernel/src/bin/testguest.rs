//! Placeholder until the runtime lands.
#![no_std]
#![no_main]
use kernel_rt as _;
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
