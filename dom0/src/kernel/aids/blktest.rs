//! `blktest=1`: dom0's own check of the first disk, through virtio-drivers' `Hal` as any
//! driver would use it: a pattern written over 64 KiB at the disk's last MiB (the image is
//! scratch), flushed, read back into a buffer shared in place or bounced, and a read into a
//! buffer whose pages are out of machine order (which must bounce). Prints
//! `TEST blk.dom0 PASS|FAIL ...`.

use crate::hw::hal;
use crate::hw::virtio_blk::{Op, VirtioBlk};
use pv_guest_kernel::println;
use pv_guest_kernel::va::DOM0_SCRATCH as SCRATCH_VA;

/// Reads `want.len()` (8 KiB) bytes at `sector` into a buffer whose two pages are frames out
/// of machine order, so `share` must bounce it, and compares.
fn scattered_read(d: &mut VirtioBlk, sector: u64, want: &[u8]) -> Result<(), &'static str> {
    use pv_guest_kernel::mm::{self, pt};
    use virtio_drivers::{BufferDirection, Hal};
    let (a, b) = (mm::alloc_page().map_err(|_| "no page")?, mm::alloc_page().map_err(|_| "no page")?);
    // The second frame first: consecutive only if `a` directly follows `b`.
    let (lo, hi) = if a.mfn.0 == b.mfn.0 + 1 { (a, b) } else { (b, a) };
    let mapped = mm::map_page(SCRATCH_VA, lo.mfn, pt::PAGE_KERNEL | pt::NX).is_ok()
        && mm::map_page(SCRATCH_VA + 4096, hi.mfn, pt::PAGE_KERNEL | pt::NX).is_ok();
    let result = if !mapped {
        Err("cannot map the scattered buffer")
    } else if hal::contiguous_machine(SCRATCH_VA, want.len()).is_some() {
        Err("the buffer came out machine-contiguous")
    } else {
        // SAFETY: both pages are ours and mapped at SCRATCH_VA for the duration.
        let buf = unsafe { core::slice::from_raw_parts_mut(SCRATCH_VA as *mut u8, want.len()) };
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
    let _ = mm::unmap_page(SCRATCH_VA);
    let _ = mm::unmap_page(SCRATCH_VA + 4096);
    let _ = mm::free_page(a.pfn);
    let _ = mm::free_page(b.pfn);
    result
}

/// Writes a pattern over 64 KiB at the disk's last MiB, flushes, reads it back and
/// compares — through virtio-drivers' `Hal` as any driver would use it: the data to write in
/// `dma_alloc`ed memory, the buffer to read into a heap allocation handed to the device with
/// `share`/`unshare` (bounced if its frames are not machine-contiguous).
pub fn run(d: &mut VirtioBlk) {
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
