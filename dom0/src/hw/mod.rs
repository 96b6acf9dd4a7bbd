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
//!   first disk (overwriting it), `blkruns=<n>` runs each (default 16);
//!   `blkbench-wait=<name|id>` first waits until that domain has shut down, so the figures
//!   are not shared with another domain's CPU load;
//! * `blkdepth=<n>` — requests in flight in that benchmark (default 32, a blkif ring's worth);
//! * `vbd=<name|id>[,...]` — serve the n-th disk to the n-th domain as a Xen vbd
//!   ([`blkif`]); `blkchunk=<n>` caps the disk completions answered per pass and
//!   `blkyield=1` hands the CPU to a frontend that has answers while the disk is still busy
//!   (tuning knobs for measurements; the defaults are what the benchmarks use);
//! * `vrng=<name|id>[,...]` or `vrng=none` — which domains get a random-number device backed
//!   by virtio-rng ([`rng`]; default: every domU).
//!
//! The split-driver backends ([`blkif`], [`rng`]) are kinds of [`backends::Backends`], the
//! host every backend kind shares.

pub mod backends;
pub mod blkbench;
pub mod blkif;
pub mod dma;
pub mod hal;
pub mod irq;
pub mod portio;
pub mod rng;
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
            if let Some(who) = cmdline::get(cmd, "blkbench-wait") {
                wait_for_shutdown(who);
            }
            let runs = cmdline::get_u64(cmd, "blkruns", 16, 1, 1000).unwrap_or(16) as usize;
            let span = (mib * 2048).min(d.capacity);
            let depth = cmdline::get_u64(cmd, "blkdepth", 32, 1, 32).unwrap_or(32) as usize;
            let plan = blkbench::Plan {
                depth,
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

/// Where [`scattered_read`] builds its buffer.
const SCATTER_VA: u64 = 0xffff_c880_0000_0000;

/// Reads `want.len()` (8 KiB) bytes at `sector` into a buffer whose two pages are frames out
/// of machine order, so `share` must bounce it, and compares.
fn scattered_read(d: &mut VirtioBlk, sector: u64, want: &[u8]) -> Result<(), &'static str> {
    use pv_guest_kernel::mm::{self, pt};
    use virtio_drivers::{BufferDirection, Hal};
    let (a, b) = (mm::alloc_page().map_err(|_| "no page")?, mm::alloc_page().map_err(|_| "no page")?);
    // The second frame first: consecutive only if `a` directly follows `b`.
    let (lo, hi) = if a.mfn.0 == b.mfn.0 + 1 { (a, b) } else { (b, a) };
    let mapped = mm::map_page(SCATTER_VA, lo.mfn, pt::PAGE_KERNEL | pt::NX).is_ok()
        && mm::map_page(SCATTER_VA + 4096, hi.mfn, pt::PAGE_KERNEL | pt::NX).is_ok();
    let result = if !mapped {
        Err("cannot map the scattered buffer")
    } else if hal::contiguous_machine(SCATTER_VA, want.len()).is_some() {
        Err("the buffer came out machine-contiguous")
    } else {
        // SAFETY: both pages are ours and mapped at SCATTER_VA for the duration.
        let buf = unsafe { core::slice::from_raw_parts_mut(SCATTER_VA as *mut u8, want.len()) };
        buf.fill(0);
        let shared = core::ptr::NonNull::from(&mut buf[..]);
        // SAFETY: `buf` stays valid and untouched until `unshare`.
        let ma = unsafe { hal::XenHal::share(shared, BufferDirection::DeviceToDriver) };
        let r = d.request_sync(Op::Read, sector, &[(ma, want.len() as u32)]);
        // SAFETY: same buffer and address as `share`.
        unsafe { hal::XenHal::unshare(ma, shared, BufferDirection::DeviceToDriver) };
        match r {
            Ok(()) if buf[..] == *want => Ok(()),
            Ok(()) => Err("bounced data differs"),
            Err(_) => Err("read failed"),
        }
    };
    let _ = mm::unmap_page(SCATTER_VA);
    let _ = mm::unmap_page(SCATTER_VA + 4096);
    let _ = mm::free_page(a.pfn);
    let _ = mm::free_page(b.pfn);
    result
}

/// Waits (at most ten minutes) until no running domain is called or numbered `who`.
fn wait_for_shutdown(who: &str) {
    use hypercall_abi::domctl::{cmd as dc, dominf, XenDomctl, XenDomctlGetdomaininfo};
    use hypercall_abi::DomId;
    let running = || {
        let mut next = 1u16;
        while next < DomId::FIRST_RESERVED.0 {
            let mut op = XenDomctl::new(dc::GETDOMAININFO, DomId(next));
            if pv_guest_kernel::hypercall::check(pv_guest_kernel::hypercall::domctl(&mut op)).is_err() {
                return false;
            }
            let info: XenDomctlGetdomaininfo = op.payload();
            if info.domain.0 < next {
                return false;
            }
            next = info.domain.0 + 1;
            let name = dom0::boot_domains::domain_name(&info.handle, info.domain);
            let is_it = name == who || alloc::format!("{}", info.domain.0) == who;
            if is_it && info.flags & (dominf::SHUTDOWN | dominf::DYING) == 0 {
                return true;
            }
        }
        false
    };
    let deadline = pv_guest_kernel::time::now_ns() + 600_000_000_000;
    while running() && pv_guest_kernel::time::now_ns() < deadline {
        let _ = pv_guest_kernel::time::sleep(10_000_000);
    }
}

/// Writes a pattern over 64 KiB at the disk's last MiB, flushes, reads it back and
/// compares — through virtio-drivers' `Hal` as any driver would use it: the data to write in
/// `dma_alloc`ed memory, the buffer to read into a heap allocation handed to the device with
/// `share`/`unshare` (bounced if its frames are not machine-contiguous).
fn self_test(d: &mut VirtioBlk) {
    use virtio_drivers::{BufferDirection, Hal};
    let bytes = 64 * 1024usize;
    let (wma, wva) = hal::XenHal::dma_alloc(bytes / 4096, BufferDirection::DriverToDevice);
    if wma == 0 {
        println!("TEST blk.dom0 FAIL no DMA memory");
        return;
    }
    let sector = d.capacity.saturating_sub(2048);
    // SAFETY: `dma_alloc` returned `bytes` of mapped memory that only we use until dealloc.
    let wbuf = unsafe { core::slice::from_raw_parts_mut(wva.as_ptr(), bytes) };
    for (i, b) in wbuf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ 0x5a;
    }
    let mut rbuf = alloc::vec![0u8; bytes];
    let bounced = hal::contiguous_machine(rbuf.as_ptr() as u64, bytes).is_none();
    let w = d.request_sync(Op::Write, sector, &[(wma, bytes as u32)]);
    let f = if d.flush { d.request_sync(Op::Flush, 0, &[]) } else { Ok(()) };
    let shared = core::ptr::NonNull::from(&mut rbuf[..]);
    // SAFETY: `rbuf` lives until after `unshare` and is not touched in between.
    let rma = unsafe { hal::XenHal::share(shared, BufferDirection::DeviceToDriver) };
    let r = d.request_sync(Op::Read, sector, &[(rma, bytes as u32)]);
    // SAFETY: the same buffer and address as `share`; the device is done with it.
    unsafe { hal::XenHal::unshare(rma, shared, BufferDirection::DeviceToDriver) };
    let same = wbuf[..] == rbuf[..];
    let scattered = scattered_read(d, sector, &wbuf[..8192]);
    match (w, f, r, same, scattered) {
        (Ok(()), Ok(()), Ok(()), true, Ok(())) => println!(
            "TEST blk.dom0 PASS 64 KiB written, flushed and read back at sector {sector} ({} interrupts, read buffer {}; a scattered buffer bounced)",
            d.counters.interrupts,
            if bounced { "bounced" } else { "shared in place" }
        ),
        _ => println!("TEST blk.dom0 FAIL write {w:?} flush {f:?} read {r:?} equal {same} scattered {scattered:?}"),
    }
    // SAFETY: allocated above with these values; the device is done with it.
    if unsafe { hal::XenHal::dma_dealloc(wma, wva, bytes / 4096) } != 0 {
        println!("TEST blk.dom0-dealloc FAIL dma_dealloc");
    }
}
