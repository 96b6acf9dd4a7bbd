//! `scenario=blk-indirect`: dom0's blkback as Linux's blkfront uses it, with
//! `BLKIF_OP_INDIRECT` requests built by hand on the raw ring.
//!
//! Reads `feature-max-indirect-segments` from the backend, writes the shared pattern
//! (`blk::fill`) with indirect requests — one carrying as many whole pages as offered (at most
//! 64), one of 20 segments whose first and last cover part of their pages — printing where
//! (`blk-indirect: seed S write SECTOR COUNT`) so the host checks the image file, flushes,
//! reads both back with indirect requests into fresh pages and compares. Then plays a
//! hostile frontend: indirect requests with no segment, more than offered, a bad
//! `indirect_op`, a descriptor page it never granted, descriptors with a bad sector range or
//! an ungranted page, a range past the disk; each must get `BLKIF_RSP_ERROR` answered with
//! the request's `indirect_op`, and a good request after each must still work.

use super::blk::{exchange, fill, my_domid, scattered_slots};
use super::{report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use hypercall_abi::io::blkif::{keys, op, rsp, BlkifRequest, BlkifRequestSegment, BLKIF_SECTOR_SIZE};
use hypercall_abi::{GrantRef, PAGE_SIZE};
use pv_guest_kernel::blkfront::Blkfront;
use pv_guest_kernel::mm::{self, Page};
use pv_guest_kernel::xenbus::{RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, gnttab, println};
use zerocopy::IntoBytes;

/// Whole-page segments of the big request at most, and the segments of the partial one.
const BIG: usize = 64;
const PARTIAL: usize = 20;

/// A page's bytes.
fn bytes(p: &Page) -> &'static mut [u8] {
    // SAFETY: a page of ours from the allocator, in the direct map, used only by this
    // scenario until it frees it; no other reference to it is alive while this one is used.
    unsafe { core::slice::from_raw_parts_mut(p.va as *mut u8, PAGE_SIZE) }
}

fn seg(gref: GrantRef, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
    BlkifRequestSegment { gref, first_sect, last_sect, _pad: 0 }
}

/// Writes `segs` into the descriptor page `p`.
fn describe(p: &Page, segs: &[BlkifRequestSegment]) {
    let b = bytes(p);
    b.fill(0);
    b[..segs.len() * 8].copy_from_slice(segs.as_bytes());
}

/// What the backend answered, counted as dom0 counts it (the test compares the two).
#[derive(Default)]
struct Tally {
    /// Indirect requests served.
    indirect: u64,
    /// Requests answered with an error.
    errors: u64,
}

/// Sends one request and returns its (operation, status).
fn one(disk: &mut Blkfront, r: &BlkifRequest, t: &mut Tally) -> Result<(u8, i16), String> {
    let rsps = exchange(disk, core::slice::from_ref(r))?;
    match rsps.first() {
        Some(x) if x.id == r.id && x._pad0 == 0 && x._pad1 == 0 => {
            match x.status {
                rsp::OKAY if r.operation == op::INDIRECT => t.indirect += 1,
                rsp::ERROR => t.errors += 1,
                _ => {}
            }
            Ok((x.operation, x.status))
        }
        other => Err(format!("bad response {other:?}")),
    }
}

pub fn run(c: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let name = "blk-indirect";
    let mut fails: Vec<String> = Vec::new();
    let seed = cmdline::get_u64(c.cmd, "seed", 1, 0, u64::MAX).unwrap_or(1);
    let backend_dir = format!("/local/domain/0/backend/vbd/{}/{}", my_domid(xb), disk.devid);
    let max = xb
        .read_string(TxId::NONE, &format!("{backend_dir}/{}", keys::FEATURE_MAX_INDIRECT_SEGMENTS))
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    println!("{name}: backend offers max-indirect-segments={max}");
    if max <= 11 {
        report(name, &[format!("indirect segments not offered ({max})")], format_args!(""));
        return;
    }
    let big = max.min(BIG);
    let backend = disk.raw().backend;
    let pages: Vec<Page> = (0..big + PARTIAL + 2).filter_map(|_| mm::alloc_page().ok()).collect();
    if pages.len() < big + PARTIAL + 2 {
        report(name, &[String::from("no memory")], format_args!(""));
        return;
    }
    let (data, desc) = pages.split_at(big + PARTIAL);
    let grefs: Vec<GrantRef> =
        data.iter().map(|p| gnttab::grant_access(backend, p.mfn, false).unwrap_or(GrantRef(0))).collect();
    // The descriptor pages are only read by the backend.
    let dgrefs: Vec<GrantRef> =
        desc.iter().map(|p| gnttab::grant_access(backend, p.mfn, true).unwrap_or(GrantRef(0))).collect();

    // The two requests: `big` whole pages; PARTIAL pages, sectors 3..=7 of the first, all of
    // the middle ones, 0..=2 of the last.
    let big_segs: Vec<BlkifRequestSegment> = grefs[..big].iter().map(|&g| seg(g, 0, 7)).collect();
    let mut part_segs: Vec<BlkifRequestSegment> = grefs[big..].iter().map(|&g| seg(g, 0, 7)).collect();
    part_segs[0].first_sect = 3;
    part_segs[PARTIAL - 1].last_sect = 2;
    let sectors = |segs: &[BlkifRequestSegment]| -> u64 {
        segs.iter().map(|s| u64::from(s.last_sect - s.first_sect) + 1).sum()
    };
    let slots = disk.info.sectors / 1024;
    let at = scattered_slots(seed, slots, 2);
    let reqs: [(&[BlkifRequestSegment], u64, &[Page]); 2] =
        [(&big_segs, at[0] * 1024, &data[..big]), (&part_segs, at[1] * 1024 + 5, &data[big..])];

    let mut id = 1u64;
    let mut tally = Tally::default();
    for (segs, sector, pages) in reqs.iter() {
        // The pattern goes where each segment's sectors are in its page.
        let mut s = *sector;
        for (sg, p) in segs.iter().zip(pages.iter()) {
            let n = u64::from(sg.last_sect - sg.first_sect) + 1;
            let off = sg.first_sect as usize * BLKIF_SECTOR_SIZE as usize;
            fill(&mut bytes(p)[off..off + n as usize * 512], seed, s);
            s += n;
        }
        describe(&desc[0], segs);
        let n = sectors(segs);
        println!("{name}: seed {seed} write {sector} {n}");
        match one(
            &mut disk,
            &BlkifRequest::indirect(op::WRITE, id, *sector, segs.len() as u16, &[dgrefs[0]]),
            &mut tally,
        ) {
            Ok((op::WRITE, rsp::OKAY)) => {}
            other => fails.push(format!("indirect write of {} segments: {other:?}", segs.len())),
        }
        id += 1;
    }
    if let Err(e) = disk.flush() {
        fails.push(format!("flush: {e}"));
    }
    // Read back into the same pages, zeroed first.
    let mut want = alloc::vec![0u8; 4096];
    for (segs, sector, pages) in reqs.iter() {
        for p in pages.iter() {
            bytes(p).fill(0x5a);
        }
        describe(&desc[1], segs);
        match one(
            &mut disk,
            &BlkifRequest::indirect(op::READ, id, *sector, segs.len() as u16, &[dgrefs[1]]),
            &mut tally,
        ) {
            Ok((op::READ, rsp::OKAY)) => {}
            other => fails.push(format!("indirect read of {} segments: {other:?}", segs.len())),
        }
        id += 1;
        let mut s = *sector;
        for (i, (sg, p)) in segs.iter().zip(pages.iter()).enumerate() {
            let n = (u64::from(sg.last_sect - sg.first_sect) + 1) as usize;
            let off = sg.first_sect as usize * 512;
            fill(&mut want[..n * 512], seed, s);
            if bytes(p)[off..off + n * 512] != want[..n * 512] {
                fails.push(format!("segment {i} of the request at sector {sector} read back differently"));
            }
            s += n as u64;
        }
    }

    // Hostile indirect requests, each followed by a good one.
    let unknown = GrantRef(GNTTAB_NR_RESERVED_ENTRIES + 1900);
    let d = &desc[0];
    let good_desc = [seg(grefs[0], 0, 7)];
    let cap = disk.info.sectors;
    type Case<'a> = (&'a str, &'a [BlkifRequestSegment], u8, u64, u16, GrantRef);
    let bad_range = [seg(grefs[0], 0, 7), seg(grefs[1], 5, 4)];
    let past_page = [seg(grefs[0], 0, 8)];
    let unknown_seg = [seg(grefs[0], 0, 7), seg(unknown, 0, 7)];
    let cases: [Case; 8] = [
        ("no segment", &good_desc, op::READ, 0, 0, dgrefs[0]),
        ("more segments than offered", &good_desc, op::READ, 0, max as u16 + 1, dgrefs[0]),
        ("a flush as indirect_op", &good_desc, op::FLUSH_DISKCACHE, 0, 1, dgrefs[0]),
        ("an ungranted descriptor page", &good_desc, op::READ, 0, 1, unknown),
        ("first_sect > last_sect", &bad_range, op::READ, 0, 2, dgrefs[0]),
        ("last_sect past the page", &past_page, op::READ, 0, 1, dgrefs[0]),
        ("an ungranted data page", &unknown_seg, op::READ, 0, 2, dgrefs[0]),
        ("past the disk's end", &good_desc, op::READ, cap - 4, 1, dgrefs[0]),
    ];
    for (what, segs, iop, sector, nr, page) in cases {
        describe(d, segs);
        match one(&mut disk, &BlkifRequest::indirect(iop, id, sector, nr, &[page]), &mut tally) {
            Ok(got) if got == (iop, rsp::ERROR) => {}
            other => fails.push(format!("{what}: got {other:?}, want ({iop}, {})", rsp::ERROR)),
        }
        id += 1;
        describe(d, &good_desc);
        match one(&mut disk, &BlkifRequest::indirect(op::READ, id, 8, 1, &[dgrefs[0]]), &mut tally) {
            Ok((op::READ, rsp::OKAY)) => {}
            other => fails.push(format!("{what}: the good request after it got {other:?}")),
        }
        id += 1;
    }
    println!("{name}: indirect={} errors={}", tally.indirect, tally.errors);
    if let Err(e) = disk.disconnect(xb, 10_000_000_000) {
        fails.push(format!("disconnect: {e}"));
    }
    for (p, g) in data.iter().zip(&grefs).chain(desc.iter().zip(&dgrefs)) {
        if gnttab::end_access(*g).is_err() {
            fails.push(format!("grant {} still mapped by the backend after the test", g.0));
        }
        let _ = mm::free_page(p.pfn);
    }
    report(
        name,
        &fails,
        format_args!(
            "indirect writes of {big} and {PARTIAL} segments read back, {} hostile indirect requests refused",
            cases.len()
        ),
    );
}
