//! Virtual-disk scenarios (`scenario=blk-*`), run against dom0's blkback:
//!
//! * `blk-pattern`: writes a pattern over 16 MiB at scattered places (printing where, so the
//!   host can check the image file), flushes, reads everything back and compares;
//! * `blk-image`: reads a prepared image whose sectors the host filled with known content;
//! * `blk-hostile`: plays a bad blkfront — requests past the disk's end, overflowing sector
//!   numbers, bad sector ranges, 0 or 12+ segments, unknown grants, unknown operations, the
//!   same id twice — each must get an error response with zeroed padding while good requests
//!   in between keep working (hostile indirect requests are `blk-indirect`'s); finally a producer index more than a ring ahead must make the
//!   backend close the connection;
//! * `blk-destroy`: crashes with a ring full of requests in flight (dom0 must finish them and
//!   release everything);
//! * `blk-noio`: a domU must not reach I/O ports, device memory or interrupts;
//! * `blk-bench`: the domU side of the disk benchmarks.

use super::{bench_order, report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;
use hypercall_abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use hypercall_abi::hypercall::nr;
use hypercall_abi::io::blkif::{op, rsp, BlkifRequest, BlkifRequestSegment, BlkifResponse};
use hypercall_abi::io::ring::{RingMemory, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_PROD_OFFSET};
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::microvisor::bench::{Line, Stats};
use hypercall_abi::physdev::{map_pirq_type, op as physop, PhysdevMapPirq};
use hypercall_abi::xen::{mmu, MmuUpdate};
use hypercall_abi::{sched, DomId, Errno, GrantRef, Mfn};
use pv_guest_kernel::blkfront::{Blkfront, Op, SectorBuf, Segment};
use pv_guest_kernel::mm::{self, pt, Page};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::xenbus::{self, RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, gnttab, hypercall, println, time};

/// How long a scenario waits for dom0 (xenstore, the vbd) before giving up.
pub(crate) const SETUP_NS: u64 = 120_000_000_000;

/// What a disk scenario runs once its disk is connected.
pub type DiskScenario = fn(&Ctx, Blkfront, &mut Xenbus<RingTransport>);

/// Connects the scenario's virtual disk (after the benchmark ordering's `after=1`, if given),
/// then runs `body` on it.
pub fn with_disk(c: &Ctx, body: DiskScenario) {
    let (si, scenario) = (c.si, c.name);
    bench_order::wait_after(si);
    let Some(mut xb) = connect_xenstore(si) else {
        println!("TEST {scenario} FAIL no xenstore connection");
        return;
    };
    let disk = match Blkfront::connect(&mut xb, SETUP_NS) {
        Ok(d) => d,
        Err(e) => {
            println!("TEST {scenario} FAIL no virtual disk: {e}");
            return;
        }
    };
    println!("{scenario}: vbd/{} connected, {} sectors", disk.devid, disk.info.sectors);
    body(c, disk, &mut xb);
}

/// Connects to xenstore, retrying while dom0 is busy (its own disk benchmark may run first).
pub(crate) fn connect_xenstore(si: &StartInfo) -> Option<Xenbus<RingTransport>> {
    let deadline = time::now_ns() + SETUP_NS;
    loop {
        match xenbus::connect(si) {
            Ok(xb) => return Some(xb),
            Err(Errno::ETIMEDOUT) if time::now_ns() < deadline => continue,
            Err(e) => {
                println!("blk: xenstore: {e}");
                return None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// blk-pattern

/// Sectors per chunk (256 KiB) and chunks written (16 MiB).
const CHUNK: u64 = 512;
const CHUNKS: usize = 64;

/// The pattern's 64-bit word `i` of sector `s` (the host test computes the same).
fn pattern_word(seed: u64, s: u64, i: u64) -> u64 {
    (s ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i)
}

pub(crate) fn fill(buf: &mut [u8], seed: u64, sector: u64) {
    for (k, sec) in buf.chunks_exact_mut(512).enumerate() {
        for (i, w) in sec.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&pattern_word(seed, sector + k as u64, i as u64).to_le_bytes());
        }
    }
}

/// `n` distinct slots in `0..slots` (`n` <= `slots`), scattered over the disk by `seed`.
pub(crate) fn scattered_slots(seed: u64, slots: u64, n: usize) -> Vec<u64> {
    let mut chosen: Vec<u64> = Vec::new();
    let mut x = seed | 1;
    while chosen.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = x % slots;
        if !chosen.contains(&slot) {
            chosen.push(slot);
        }
    }
    chosen
}

pub fn pattern(c: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let cmd = c.cmd;
    let seed = cmdline::get_u64(cmd, "seed", 1, 0, u64::MAX).unwrap_or(1);
    let slots = disk.info.sectors / CHUNK;
    if slots < CHUNKS as u64 {
        println!("TEST blk-pattern FAIL the disk is too small ({} sectors)", disk.info.sectors);
        return;
    }
    let chosen = scattered_slots(seed, slots, CHUNKS);
    for line in chosen.chunks(16) {
        let list: Vec<String> = line.iter().map(|s| format!("{}", s * CHUNK)).collect();
        println!("blk-pattern: seed {seed} chunks {}", list.join(" "));
    }
    // Whole pages and, for odd chunks, a buffer starting 3 sectors into a page, so segments
    // with first_sect != 0 and partial last pages are exercised too.
    let Some(mut buf) = SectorBuf::new((CHUNK as usize + 8) * 512) else {
        println!("TEST blk-pattern FAIL no memory");
        return;
    };
    let t0 = time::now_ns();
    // What the backend served, as it counts it (the host test compares the two).
    let (mut written, mut read) = (0u64, 0u64);
    for (n, &slot) in chosen.iter().enumerate() {
        let off = if n % 2 == 1 { 3 * 512 } else { 0 };
        let b = &mut buf[off..off + CHUNK as usize * 512];
        fill(b, seed, slot * CHUNK);
        match disk.write(slot * CHUNK, b) {
            Ok(()) => written += CHUNK,
            Err(e) => fails.push(format!("write of chunk at sector {}: {e}", slot * CHUNK)),
        }
    }
    let flushes = match disk.flush() {
        Ok(()) => 1,
        Err(e) => {
            fails.push(format!("flush: {e}"));
            0
        }
    };
    let mut want = alloc::vec![0u8; CHUNK as usize * 512];
    for (n, &slot) in chosen.iter().enumerate() {
        let off = if n % 2 == 0 { 3 * 512 } else { 0 };
        let b = &mut buf[off..off + CHUNK as usize * 512];
        b.fill(0xa5);
        if let Err(e) = disk.read(slot * CHUNK, b) {
            fails.push(format!("read of chunk at sector {}: {e}", slot * CHUNK));
            continue;
        }
        read += CHUNK;
        fill(&mut want, seed, slot * CHUNK);
        if *b != want[..] {
            let bad = b.chunks(512).zip(want.chunks(512)).position(|(x, y)| x != y).unwrap_or(0);
            fails.push(format!(
                "chunk at sector {} differs at sector {}",
                slot * CHUNK,
                slot * CHUNK + bad as u64
            ));
        }
    }
    let ms = time::now_ns().saturating_sub(t0) / 1_000_000;
    let st = disk.stats;
    println!(
        "blk-pattern: requests={} sectors_written={written} sectors_read={read} flushes={flushes}",
        st.requests
    );
    let r = disk.disconnect(xb, 10_000_000_000);
    if let Err(e) = r {
        fails.push(format!("disconnect: {e}"));
    }
    report(
        "blk-pattern",
        &fails,
        format_args!(
            "{} MiB written at {CHUNKS} places, flushed, read back and compared in {ms} ms ({} requests, {} notifies, {} bogus)",
            CHUNKS as u64 * CHUNK / 2048,
            st.requests,
            st.notifies,
            st.bogus
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// blk-image

/// What the host wrote in sector `s` of the prepared image.
fn image_sector(s: u64, out: &mut [u8]) {
    let head = format!("MICROVISOR-IMAGE sector={s:010}\n");
    out.fill((s % 251) as u8);
    out[..head.len()].copy_from_slice(head.as_bytes());
}

pub fn image(_: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let n = disk.info.sectors;
    let Some(mut buf) = SectorBuf::new(128 * 1024) else { return };
    let mut want = [0u8; 512];
    let (mut checked, mut read) = (0u64, 0u64);
    let mut ranges = alloc::vec![(0u64, 4096u64.min(n))];
    if n > 4096 {
        ranges.push((n - 64, n));
    }
    for (start, end) in ranges {
        let mut s = start;
        while s < end {
            let cnt = (end - s).min(256);
            let b = &mut buf[..cnt as usize * 512];
            if let Err(e) = disk.read(s, b) {
                fails.push(format!("read at sector {s}: {e}"));
                break;
            }
            read += cnt;
            for (k, got) in b.chunks(512).enumerate() {
                image_sector(s + k as u64, &mut want);
                if got != want && fails.len() < 4 {
                    fails.push(format!("sector {} differs", s + k as u64));
                }
                checked += 1;
            }
            s += cnt;
        }
    }
    println!("blk-image: checked={checked} sectors_read={read}");
    let _ = disk.disconnect(xb, 10_000_000_000);
    report("blk-image", &fails, format_args!("{checked} sectors of the prepared image read and checked"));
}

// ---------------------------------------------------------------------------------------------
// blk-hostile

fn seg(gref: GrantRef, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
    BlkifRequestSegment { gref, first_sect, last_sect, _pad: 0 }
}

fn req(operation: u8, id: u64, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    r
}

/// Sends `reqs` at once and collects one response per request (or times out).
pub(crate) fn exchange(disk: &mut Blkfront, reqs: &[BlkifRequest]) -> Result<Vec<BlkifResponse>, String> {
    let mut raw = disk.raw();
    for r in reqs {
        raw.push(r).map_err(|e| format!("push: {e}"))?;
    }
    raw.notify();
    let deadline = time::now_ns() + 10_000_000_000;
    let mut out = Vec::new();
    while out.len() < reqs.len() {
        match raw.take() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {
                if !raw.wait(deadline) {
                    return Err(format!("{} of {} responses", out.len(), reqs.len()));
                }
            }
            Err(e) => return Err(format!("ring: {e}")),
        }
    }
    Ok(out)
}

pub fn hostile(_: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let backend = disk.raw().backend;
    let cap = disk.info.sectors;
    let pages: Vec<Page> = (0..24).filter_map(|_| mm::alloc_page().ok()).collect();
    if pages.len() < 24 {
        println!("TEST blk-hostile FAIL no memory");
        return;
    }
    let grant = |p: &Page, ro: bool| gnttab::grant_access(backend, p.mfn, ro).unwrap_or(GrantRef(0));
    let w: Vec<GrantRef> = pages[..20].iter().map(|p| grant(p, false)).collect();
    let ro = grant(&pages[20], true);
    // A reference this domain never granted (inside the table, past everything in use).
    let unknown = GrantRef(GNTTAB_NR_RESERVED_ENTRIES + 1900);
    let mut twelve = req(op::READ, 1006, 0, &[seg(w[0], 0, 7)]);
    twelve.nr_segments = 12;
    let mut all = req(op::READ, 1007, 0, &[seg(w[0], 0, 7)]);
    all.nr_segments = 255;
    let cases: Vec<(&str, BlkifRequest, i16)> = alloc::vec![
        ("past the end", req(op::READ, 1001, cap - 4, &[seg(w[0], 0, 7)]), rsp::ERROR),
        ("sector overflow", req(op::READ, 1002, u64::MAX - 3, &[seg(w[0], 0, 7)]), rsp::ERROR),
        ("first_sect > last_sect", req(op::READ, 1003, 0, &[seg(w[0], 5, 4)]), rsp::ERROR),
        ("last_sect > 7", req(op::READ, 1004, 0, &[seg(w[0], 0, 8)]), rsp::ERROR),
        ("no segment", req(op::READ, 1005, 0, &[]), rsp::ERROR),
        ("12 segments", twelve, rsp::ERROR),
        ("255 segments", all, rsp::ERROR),
        ("unknown grant", req(op::READ, 1008, 0, &[seg(w[0], 0, 7), seg(unknown, 0, 7)]), rsp::ERROR),
        ("read into a read-only grant", req(op::READ, 1009, 0, &[seg(ro, 0, 7)]), rsp::ERROR),
        ("unknown operation", req(0x77, 1010, 0, &[seg(w[0], 0, 7)]), rsp::EOPNOTSUPP),
        ("write barrier (not offered)", req(op::WRITE_BARRIER, 1011, 0, &[seg(w[0], 0, 7)]), rsp::EOPNOTSUPP),
        ("discard (not offered)", req(op::DISCARD, 1012, 0, &[]), rsp::EOPNOTSUPP),
    ];
    let mut good_id = 3000u64;
    // Every request and how it was answered, as dom0 counts them (the host test compares).
    let (mut sent, mut errors, mut unsupported) = (0u64, 0u64, 0u64);
    let mut tally = |rsps: &[BlkifResponse]| {
        sent += rsps.len() as u64;
        errors += rsps.iter().filter(|r| r.status == rsp::ERROR).count() as u64;
        unsupported += rsps.iter().filter(|r| r.status == rsp::EOPNOTSUPP).count() as u64;
    };
    for (what, bad, want) in &cases {
        good_id += 1;
        let good = req(op::READ, good_id, 8, &[seg(w[1], 0, 7)]);
        match exchange(&mut disk, &[*bad, good]) {
            Ok(rsps) => {
                tally(&rsps);
                for r in &rsps {
                    if r._pad0 != 0 || r._pad1 != 0 {
                        fails.push(format!("{what}: response padding not zero: {r:?}"));
                    }
                }
                let of = |id| rsps.iter().find(|r| r.id == id).map(|r| (r.operation, r.status));
                if of(bad.id) != Some((bad.operation, *want)) {
                    fails.push(format!("{what}: got {:?}, want status {want}", of(bad.id)));
                }
                if of(good_id) != Some((op::READ, rsp::OKAY)) {
                    fails.push(format!("{what}: the good request after it got {:?}", of(good_id)));
                }
            }
            Err(e) => fails.push(format!("{what}: {e}")),
        }
    }
    // The same id twice in one batch: the first (11 pages) is still in flight when the second
    // arrives, which must fail alone.
    let big: Vec<BlkifRequestSegment> = w[2..13].iter().map(|&g| seg(g, 0, 7)).collect();
    let dup = [req(op::READ, 2000, 64, &big), req(op::READ, 2000, 256, &[seg(w[13], 0, 7)])];
    match exchange(&mut disk, &dup) {
        Ok(rsps) => {
            tally(&rsps);
            let mut st: Vec<i16> = rsps.iter().map(|r| r.status).collect();
            st.sort();
            if st != [rsp::ERROR, rsp::OKAY] {
                fails.push(format!("same id twice: statuses {st:?}, want one error and one success"));
            }
        }
        Err(e) => fails.push(format!("same id twice: {e}")),
    }
    println!("blk-hostile: requests={sent} errors={errors} unsupported={unsupported}");
    // Finally a producer index more than a ring ahead: the backend must give up the ring.
    let state_path = format!("/local/domain/0/backend/vbd/{}/{}/state", my_domid(xb), disk.devid);
    {
        let raw = disk.raw();
        let rsp_prod = raw.ring.load_u32_acquire(RSP_PROD_OFFSET);
        raw.ring.store_u32_release(REQ_PROD_OFFSET, rsp_prod.wrapping_add(40));
        raw.notify();
    }
    let closed = wait_backend_closed(xb, &state_path);
    if closed.is_none() {
        fails.push(String::from("a producer index 40 ahead did not make the backend close"));
    }
    for (p, g) in pages[..20].iter().zip(&w).chain(core::iter::once((&pages[20], &ro))) {
        if gnttab::end_access(*g).is_err() {
            fails.push(format!("grant {} still mapped by the backend after the test", g.0));
        }
        let _ = mm::free_page(p.pfn);
    }
    report(
        "blk-hostile",
        &fails,
        format_args!("{} bad requests refused, good ones served, duplicate id refused, ring overrun closed the connection (state {})", cases.len(), closed.map_or("-", XenbusState::name)),
    );
}

/// Waits up to 10 s for a backend to go Closing or Closed (as it must once its frontend breaks
/// the ring), reading its `state` node at `state_path`; the state it reached, if it did.
pub(crate) fn wait_backend_closed(xb: &mut Xenbus<RingTransport>, state_path: &str) -> Option<XenbusState> {
    let deadline = time::now_ns() + 10_000_000_000;
    while time::now_ns() < deadline {
        let s = xb.read_string(TxId::NONE, state_path).unwrap_or_default();
        if let Some(st) = XenbusState::parse(&s).filter(|st| st.is_closing()) {
            return Some(st);
        }
        let _ = time::sleep(10_000_000);
    }
    None
}

pub(crate) fn my_domid(xb: &mut Xenbus<RingTransport>) -> String {
    xb.read_string(TxId::NONE, "domid").unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// blk-destroy

pub fn destroy(_: &Ctx, mut disk: Blkfront, _: &mut Xenbus<RingTransport>) {
    if crash_with_writes_in_flight(&mut disk, 65536, "TEST blk-destroy RUNNING").is_err() {
        println!("TEST blk-destroy FAIL no memory");
    }
}

/// Submits 32 writes of 44 KiB each (11 pages, 88 sectors apart) from `first_sector` on, waits
/// until the backend has taken them all and crashes the domain (`SCHEDOP_shutdown(crash)`)
/// while the disk is still working on them, after printing `<who> crashing with <n> of <m>
/// requests in flight`. Returns (`ENOMEM`) only when memory is short.
pub fn crash_with_writes_in_flight(disk: &mut Blkfront, first_sector: u64, who: &str) -> Result<(), Errno> {
    let pages: Vec<Page> = (0..32 * 11).filter_map(|_| mm::alloc_page().ok()).collect();
    if pages.len() < 32 * 11 {
        return Err(Errno::ENOMEM);
    }
    let mut n = 0;
    for (i, chunk) in pages.chunks(11).enumerate() {
        let segs: Vec<Segment> =
            chunk.iter().map(|p| Segment { mfn: p.mfn, first_sect: 0, last_sect: 7 }).collect();
        // Writes to a fresh stretch of the image keep the host busier than reads.
        if disk.submit(Op::Write, first_sector + i as u64 * 88, &segs, i as u64).is_ok() {
            n += 1;
        }
    }
    disk.kick();
    // Wait until the backend has taken every request (it then sets req_event past them) and
    // crash at once, while the disk is still working on them.
    let deadline = time::now_ns() + 10_000_000_000;
    loop {
        let raw = disk.raw();
        let prod = raw.front.req_prod_pvt();
        if raw.ring.load_u32_acquire(REQ_EVENT_OFFSET) == prod.wrapping_add(1) || time::now_ns() > deadline {
            break;
        }
        core::hint::spin_loop();
    }
    println!("{who} crashing with {} of {n} requests in flight", disk.in_flight());
    hypercall::shutdown(sched::shutdown::CRASH)
}

// ---------------------------------------------------------------------------------------------
// blk-noio

pub fn noio() {
    let mut fails: Vec<String> = Vec::new();
    // Device memory: an L1 entry for a frame in the PCI hole, as dom0 maps BARs.
    let va = pv_guest_kernel::va::TEST_PROBES;
    match mm::entry_maddr(va, 1) {
        Ok(l1e) => {
            let req = [MmuUpdate {
                ptr: l1e | mmu::NORMAL_PT_UPDATE,
                val: pt::make(Mfn(0xfe000), pt::PAGE_KERNEL),
            }];
            let mut done = 0u32;
            let r = hypercall::mmu_update(&req, &mut done, DomId::IO);
            if r != Errno::EPERM.to_ret() {
                fails.push(format!("mmu_update of device memory with DOMID_IO returned {r}, want -EPERM"));
            }
        }
        Err(e) => fails.push(format!("no L1 for the probe: {e}")),
    }
    // Interrupts.
    let mut m = PhysdevMapPirq {
        domid: DomId::SELF,
        type_: map_pirq_type::GSI,
        index: 11,
        pirq: -1,
        ..Default::default()
    };
    let r = hypercall::call2::<{ nr::PHYSDEV_OP }>(u64::from(physop::MAP_PIRQ), hypercall::ptr_mut(&mut m));
    if r != Errno::EPERM.to_ret() {
        fails.push(format!("PHYSDEVOP_map_pirq returned {r}, want -EPERM"));
    }
    report("blk-noio", &fails, format_args!("device memory and pirqs refused (-EPERM)"));
    // Ports: with no trap table the #GP of `in` from 0xCF8 must crash this domain.
    if pv_guest_kernel::traps::clear_table().is_err() {
        println!("TEST blk-noio-port FAIL cannot clear the trap table");
        return;
    }
    println!(
        "TEST blk-noio-port RUNNING in from PCI config port 0xcf8: the hypervisor must crash this domain"
    );
    // SAFETY: port input without permission faults (#GP) in a domU; eax is declared clobbered.
    unsafe { asm!("in eax, dx", in("dx") 0xcf8u16, out("eax") _, options(nomem, nostack)) };
    println!("TEST blk-noio-port FAIL the domain read port 0xcf8");
}

// ---------------------------------------------------------------------------------------------
// blk-bench

/// Requests in flight, pages per sequential request, random reads per run: the same pattern
/// dom0's own benchmark uses, so the ratio compares like with like.
const DEPTH: usize = 32;
const SEQ_PAGES: usize = 11;
const RAND_PER_RUN: usize = 512;

fn stream(
    disk: &mut Blkfront,
    slots: &[Vec<Segment>],
    op_: Op,
    n: usize,
    mut at: impl FnMut(usize) -> u64,
) -> Result<u64, String> {
    let mut free: Vec<usize> = (0..slots.len()).collect();
    let (mut issued, mut done) = (0usize, 0usize);
    let mut err = None;
    let t0 = time::now_ns();
    while done < n {
        while issued < n {
            let Some(&slot) = free.last() else { break };
            match disk.submit(op_, at(issued), &slots[slot], slot as u64) {
                Ok(()) => {
                    free.pop();
                    issued += 1;
                }
                Err(pv_guest_kernel::blkfront::BlkError::Busy) => break,
                Err(e) => return Err(format!("submit: {e}")),
            }
        }
        disk.kick();
        let got = disk.poll(|tag, status| {
            free.push(tag as usize);
            done += 1;
            if status != rsp::OKAY && err.is_none() {
                err = Some(status);
            }
        });
        if got == 0 {
            disk.wait(Some(time::now_ns() + 30_000_000_000)).map_err(|e| format!("wait: {e}"))?;
        }
    }
    match err {
        Some(st) => Err(format!("status {st}")),
        None => Ok(time::now_ns().saturating_sub(t0)),
    }
}

fn mib_per_s(bytes: u64, ns: u64) -> u64 {
    (u128::from(bytes) * 1_000_000_000 / (u128::from(ns.max(1)) << 20)) as u64
}

pub fn bench(c: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let cmd = c.cmd;
    let mib = cmdline::get_u64(cmd, "span", 64, 1, 1 << 20).unwrap_or(64);
    let runs = cmdline::get_u64(cmd, "runs", 16, 1, 1000).unwrap_or(16) as usize;
    let span = (mib * 2048).min(disk.info.sectors);
    let pages: Vec<Page> = (0..DEPTH * SEQ_PAGES).filter_map(|_| mm::alloc_page().ok()).collect();
    if pages.len() < DEPTH * SEQ_PAGES {
        println!("TEST blk-bench FAIL no memory for the buffers");
        return;
    }
    let seq: Vec<Vec<Segment>> = pages
        .chunks(SEQ_PAGES)
        .map(|c| c.iter().map(|p| Segment { mfn: p.mfn, first_sect: 0, last_sect: 7 }).collect())
        .collect();
    let single: Vec<Vec<Segment>> = seq.iter().map(|s| alloc::vec![s[0]]).collect();
    let req_sectors = (SEQ_PAGES * 8) as u64;
    let run_bytes = (span * 512 / runs as u64).max(1 << 20);
    let reqs_per_run = (run_bytes / (req_sectors * 512)).max(1) as usize;
    let seq_span = reqs_per_run as u64 * req_sectors;
    if span < seq_span {
        println!("TEST blk-bench FAIL the disk is too small");
        return;
    }
    let mut fails: Vec<String> = Vec::new();
    let t_start = time::now_ns();
    // `only=<name>` runs just that benchmark (for profiling).
    let only = cmdline::get(cmd, "only");
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    for (name, op_) in [("blk.seqwrite.domU", Op::Write), ("blk.seqread.domU", Op::Read)] {
        if !wanted(name) {
            continue;
        }
        let mut samples: Vec<u64> = Vec::new();
        for run in 0..runs {
            let base = (run as u64 * seq_span) % (span - seq_span + 1);
            match stream(&mut disk, &seq, op_, reqs_per_run, |i| base + i as u64 * req_sectors) {
                Ok(ns) => samples.push(mib_per_s(seq_span * 512, ns)),
                Err(e) => {
                    fails.push(format!("{name}: {e}"));
                    break;
                }
            }
        }
        if let Some(stats) = Stats::compute(&mut samples) {
            println!("{}", Line { name, unit: "MiB/s", stats });
        }
    }
    let mut samples: Vec<u64> = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let span_pages = span / 8;
    for _ in 0..if wanted("randread4k") { runs } else { 0 } {
        let r = stream(&mut disk, &single, Op::Read, RAND_PER_RUN, |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % span_pages) * 8
        });
        match r {
            Ok(ns) => samples.push((RAND_PER_RUN as u128 * 1_000_000_000 / u128::from(ns.max(1))) as u64),
            Err(e) => {
                fails.push(format!("blk.randread4k.domU: {e}"));
                break;
            }
        }
    }
    if let Some(stats) = Stats::compute(&mut samples) {
        println!("{}", Line { name: "blk.randread4k.domU", unit: "IOPS", stats });
    }
    let st = disk.stats;
    let _ = disk.disconnect(xb, 10_000_000_000);
    for p in &pages {
        let _ = mm::free_page(p.pfn);
    }
    report(
        "blk-bench",
        &fails,
        format_args!(
            "{} requests, {} notifies, {} waits ({} ms blocked) in {} ms, {} events",
            st.requests,
            st.notifies,
            st.waits,
            st.wait_ns / 1_000_000,
            time::now_ns().saturating_sub(t_start) / 1_000_000,
            Blkfront::events()
        ),
    );
}
