//! The domU demo of the virtual disk: finds its vbd, prints its size and the first bytes of
//! sector 0, writes a line to the disk's last sector, flushes, reads it back and compares,
//! then disconnects.

use pv_guest_kernel::blkfront::{Blkfront, SectorBuf};
use pv_guest_kernel::println;
use pv_guest_kernel::xenbus::{Transport, Xenbus};

/// How long the demo waits for the backend to disconnect.
const WAIT_NS: u64 = 2_000_000_000;

/// Runs the demo if this domain has a vbd (prints a line either way).
pub fn run<T: Transport>(xb: &mut Xenbus<T>) {
    // dom0 writes the vbd's nodes before it serves our xenstore requests, so a domain that
    // has a disk sees it at once: look once, without waiting (a diskless demo must not stall).
    let mut disk = match Blkfront::connect(xb, 0) {
        Ok(d) => d,
        Err(e) => {
            println!("domU: no virtual disk ({e})");
            return;
        }
    };
    let info = disk.info;
    println!(
        "domU: virtual disk vbd/{}: {} sectors ({} MiB){}",
        disk.devid,
        info.sectors,
        info.sectors / 2048,
        if info.readonly { ", read-only" } else { "" }
    );
    let Some(mut buf) = SectorBuf::new(1024) else { return };
    match disk.read(0, &mut buf[..512]) {
        Ok(()) => {
            let mut hex = alloc::string::String::new();
            for b in &buf[..16] {
                hex.push_str(&alloc::format!("{b:02x}"));
            }
            println!("domU: sector 0 starts with {hex}");
        }
        Err(e) => println!("domU: reading sector 0 failed: {e}"),
    }
    if !info.readonly && info.sectors > 0 {
        let last = info.sectors - 1;
        let msg = b"microvisor domU was here\n";
        buf[..512].fill(0);
        buf[..msg.len()].copy_from_slice(msg);
        let (w, f) = (disk.write(last, &buf[..512]), if info.flush { disk.flush() } else { Ok(()) });
        buf[512..].fill(0xee);
        let r = disk.read(last, &mut buf[512..]);
        let same = buf[..512] == buf[512..];
        match (w, f, r, same) {
            (Ok(()), Ok(()), Ok(()), true) => println!("domU: wrote, flushed and read back sector {last}: ok"),
            _ => println!("domU: disk round trip at sector {last} failed: write {w:?} flush {f:?} read {r:?} equal {same}"),
        }
    }
    match disk.disconnect(xb, WAIT_NS) {
        Ok(()) => println!("domU: virtual disk disconnected"),
        Err(e) => println!("domU: disconnecting the virtual disk: {e}"),
    }
}
