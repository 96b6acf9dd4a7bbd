//! dom0's hardware side (kernel only: port I/O, device memory and DMA need `unsafe`): PCI
//! access through the legacy ports, machine-contiguous DMA and BAR mappings, virtio-drivers'
//! `Hal`, device interrupts as pirq event channels, the virtio-blk driver, and the disk
//! benchmark. The pure logic they use (PCI decoding, the virtqueue, blkback's request
//! handling) lives in the library and is host-tested.
//!
//! Options on dom0's command line:
//! * `blk=off` — leave the disks alone;
//! * `blktest=1` — write, read back and check a pattern on the first disk's last MiB (the
//!   image is scratch);
//! * `blkbench=<MiB>` — run the dom0-direct disk benchmarks over the first `<MiB>` of the
//!   first disk (overwriting it), `blkruns=<n>` runs each (default 16).

pub mod blkbench;
pub mod blkif;
pub mod dma;
pub mod hal;
pub mod irq;
pub mod portio;
pub mod virtio_blk;

use alloc::vec::Vec;
use pv_guest_kernel::{cmdline, println};
use virtio_blk::{Op, VirtioBlk};

/// Finds and sets up the virtio-blk disks, then runs what the command line asks for.
pub fn init(cmd: &str) -> Vec<VirtioBlk> {
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
    if let Some(d) = disks.first_mut() {
        if cmdline::get(cmd, "blktest") == Some("1") {
            self_test(d);
        }
        let mib = cmdline::get_u64(cmd, "blkbench", 0, 0, 1 << 20).unwrap_or(0);
        if mib > 0 {
            let runs = cmdline::get_u64(cmd, "blkruns", 16, 1, 1000).unwrap_or(16) as usize;
            let span = (mib * 2048).min(d.capacity);
            let plan = blkbench::Plan {
                run_bytes: (span * 512 / runs as u64).max(1 << 20),
                runs,
                rand_runs: runs,
                start: 0,
                span,
            };
            blkbench::run(d, plan);
            println!(
                "dom0: blkbench done: {} requests, {} notifies, {} interrupts ({} events)",
                d.counters.requests,
                d.counters.notifies,
                d.counters.interrupts,
                d.irq().map_or(0, |i| i.count())
            );
        }
    }
    disks
}

/// Writes a pattern over 64 KiB at the disk's last MiB, reads it back and compares.
fn self_test(d: &mut VirtioBlk) {
    let Ok(buf) = dma::alloc(32) else {
        println!("TEST blk.dom0 FAIL no DMA memory");
        return;
    };
    let sector = d.capacity.saturating_sub(2048);
    let bytes = 64 * 1024usize;
    // SAFETY: the region is ours, mapped and 128 KiB long; no device uses it now.
    let mem = unsafe { core::slice::from_raw_parts_mut(buf.va as *mut u8, 2 * bytes) };
    for (i, b) in mem[..bytes].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ 0x5a;
    }
    mem[bytes..].fill(0);
    let w = d.request_sync(Op::Write, sector, &[(buf.ma, bytes as u32)]);
    let f = if d.flush { d.request_sync(Op::Flush, 0, &[]) } else { Ok(()) };
    let r = d.request_sync(Op::Read, sector, &[(buf.ma + bytes as u64, bytes as u32)]);
    // SAFETY: as above; the device has finished both transfers.
    let mem = unsafe { core::slice::from_raw_parts(buf.va as *const u8, 2 * bytes) };
    let same = mem[..bytes] == mem[bytes..];
    match (w, f, r, same) {
        (Ok(()), Ok(()), Ok(()), true) => println!(
            "TEST blk.dom0 PASS 64 KiB written, flushed and read back at sector {sector} ({} interrupts)",
            d.counters.interrupts
        ),
        _ => println!("TEST blk.dom0 FAIL write {w:?} flush {f:?} read {r:?} equal {same}"),
    }
    let _ = dma::free(buf);
}
