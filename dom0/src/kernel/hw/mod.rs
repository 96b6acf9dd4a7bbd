//! dom0's hardware (kernel only: port I/O, device memory and DMA need `unsafe`): PCI
//! access through the legacy ports, machine-contiguous DMA and BAR mappings, virtio-drivers'
//! `Hal`, device interrupts as pirq event channels, and the virtio devices dom0 drives
//! (virtio-blk, virtio-rng, virtio-net). The pure logic they use (PCI decoding, the virtqueue) lives in
//! the library and is host-tested; the backends serving the devices to domUs are
//! [`crate::backends`].
//!
//! Option on dom0's command line: `blk=off` — leave the disks alone.

pub mod dma;
pub mod hal;
pub mod irq;
pub mod portio;
pub mod virtio_blk;
pub mod virtio_net;
pub mod virtio_rng;

use alloc::vec::Vec;
use pv_guest_kernel::{cmdline, println};
use virtio_blk::VirtioBlk;

/// Finds and sets up the virtio-blk disks.
pub fn disks(cmd: &str) -> Vec<VirtioBlk> {
    let mut disks = Vec::new();
    if cmdline::get(cmd, "blk") == Some("off") {
        return disks;
    }
    for f in virtio_blk::find() {
        match VirtioBlk::init(&f) {
            Ok(d) => {
                println!(
                    "dom0: blk {}: {} sectors ({} MiB){}{}, seg_max {}, {}",
                    d.bdf,
                    d.capacity,
                    d.capacity / 2048,
                    if d.readonly { ", read-only" } else { "" },
                    if d.flush { ", write cache" } else { "" },
                    d.seg_max,
                    match d.irq() {
                        Some(i) => alloc::format!("GSI {} -> pirq {} -> port {}", i.gsi, i.pirq, i.port.0),
                        None => alloc::string::String::from("polled"),
                    }
                );
                disks.push(d);
            }
            Err(e) => println!("dom0: blk {}: not usable: {e}", f.bdf),
        }
    }
    disks
}
