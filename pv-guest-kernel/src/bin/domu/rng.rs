//! The demo domU's use of its random-number device: 32 bytes from dom0's virtio-rng, printed,
//! then the device closed.

use alloc::format;
use alloc::string::String;
use pv_guest_kernel::println;
use pv_guest_kernel::rngfront::Rng;
use pv_guest_kernel::xenbus::{Transport, Xenbus};

/// How long the demo waits for the backend to disconnect.
const WAIT_NS: u64 = 10_000_000_000;

/// Runs the demo if this domain has a random-number device (prints a line either way).
pub fn run<T: Transport>(xb: &mut Xenbus<T>) {
    let mut rng = match Rng::connect(xb, 0) {
        Ok(r) => r,
        Err(e) => {
            println!("domU: no random-number device ({e})");
            return;
        }
    };
    let mut bytes = [0u8; 32];
    match rng.read(&mut bytes) {
        Ok(()) => {
            let mut hex = String::new();
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            println!("domU: 32 random bytes from dom0's virtio-rng: {hex}");
        }
        Err(e) => println!("domU: reading random bytes failed: {e}"),
    }
    if let Err(e) = rng.disconnect(xb, WAIT_NS) {
        println!("domU: closing the random-number device: {e}");
    }
}
