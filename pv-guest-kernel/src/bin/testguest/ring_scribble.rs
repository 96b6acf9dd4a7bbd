//! `ring-scribble`: a frontend that, once connected, rewrites its rings at full speed — its
//! virtual disk's and its random-number device's — with requests of every shape (any
//! operation, segment count, sector, grant reference, some of its own grants among them),
//! requests rewritten right after they were published, producer indexes moved by bursts, a
//! consumer-side event index set at random and, now and then, bytes thrown anywhere in the
//! page (which usually breaks the ring). It notifies dom0 after every change and never waits.
//!
//! dom0 must survive, tear each ring down cleanly and keep serving everyone else: with
//! `until=<domid>` the scenario publishes `data/bench-done` first (a neighbour given
//! `after=` starts then) and keeps scribbling until that neighbour is done; the host test
//! checks the neighbour's disk.
//!
//! Result: `ring-scribble: <n> changes (<r> requests published, <p> bytes thrown) ...` and
//! `TEST ring-scribble PASS`.

use super::{bench_order, report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::{op, BlkifRequest, BLK_RING_SIZE};
use hypercall_abi::io::ring::{RingMemory, REQ_PROD_OFFSET, RING_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET};
use hypercall_abi::io::rngif::{RngRequest, RNG_RING_SIZE};
use hypercall_abi::{GrantRef, PAGE_SIZE};
use pv_guest_kernel::blkfront::Blkfront;
use pv_guest_kernel::mm::{self, Page};
use pv_guest_kernel::rngfront::Rng;
use pv_guest_kernel::xenbus::{RingTransport, Xenbus};
use pv_guest_kernel::{cmdline, events, gnttab, println, time};
use zerocopy::IntoBytes;

/// Changes made at least, neighbour or not.
const MIN_CHANGES: u64 = 20_000;
/// How long the scribbling goes on at most waiting for the neighbour.
const UNTIL_NS: u64 = 120_000_000_000;
/// One change in this many throws bytes anywhere in the page.
const THROW_ONE_IN: u64 = 4096;

/// A ring under attack: its page, its port, its geometry.
struct Target<'a> {
    page: &'a dyn RingMemory,
    port: hypercall_abi::Port,
    slot: usize,
    size: u32,
}

struct Counts {
    changes: u64,
    published: u64,
    thrown: u64,
}

/// xorshift64*, seeded from the command line: a run can be repeated.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One change to `t`: mostly plausible traffic, sometimes garbage.
fn scribble(t: &Target, x: &mut Rand, entry: &[u8], n: &mut Counts) {
    let slot_at = |i: u32| RING_OFFSET + (i % t.size) as usize * t.slot;
    match x.below(16) {
        // A request in the next slot, published in a burst that stays within the ring.
        0..=7 => {
            let prod = t.page.load_u32_acquire(REQ_PROD_OFFSET);
            let rsp = t.page.load_u32_acquire(RSP_PROD_OFFSET);
            if prod.wrapping_sub(rsp) < t.size {
                t.page.write_bytes(slot_at(prod), &entry[..entry.len().min(t.slot)]);
                t.page.store_u32_release(REQ_PROD_OFFSET, prod.wrapping_add(1));
                n.published += 1;
            }
        }
        // The request just published rewritten, racing the backend's copy.
        8..=11 => {
            let prod = t.page.load_u32_acquire(REQ_PROD_OFFSET);
            let mut junk = [0u8; 64];
            junk.iter_mut().for_each(|b| *b = x.next() as u8);
            let at = slot_at(prod.wrapping_sub(1)) + x.below(t.slot as u64) as usize;
            let len = junk.len().min(slot_at(prod.wrapping_sub(1)) + t.slot - at);
            t.page.write_bytes(at, &junk[..len]);
        }
        12 => t.page.store_u32_release(RSP_EVENT_OFFSET, x.next() as u32),
        // The producer index anywhere within a ring's worth of the responses.
        13 => {
            let rsp = t.page.load_u32_acquire(RSP_PROD_OFFSET);
            t.page
                .store_u32_release(REQ_PROD_OFFSET, rsp.wrapping_add(x.below(u64::from(t.size) + 1) as u32));
        }
        // Rarely, bytes anywhere (indexes included): most rings break here.
        _ if x.below(THROW_ONE_IN) == 0 => {
            let at = (x.below(PAGE_SIZE as u64 - 8)) as usize;
            t.page.write_bytes(at, &x.next().to_le_bytes());
            n.thrown += 8;
        }
        _ => {}
    }
    n.changes += 1;
    let _ = events::send(t.port);
}

/// A blkif request of any shape, among its segments some of `own` grants.
fn blk_request(x: &mut Rand, own: &[GrantRef], sectors: u64) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: [op::READ, op::WRITE, op::FLUSH_DISKCACHE, x.next() as u8][x.below(4) as usize],
        nr_segments: x.below(13) as u8,
        id: x.next(),
        sector_number: if x.below(4) == 0 { x.next() } else { x.below(sectors) },
        ..Default::default()
    };
    for s in r.seg.iter_mut() {
        s.gref =
            if x.below(4) == 0 { GrantRef(x.next() as u32) } else { own[x.below(own.len() as u64) as usize] };
        s.first_sect = x.below(9) as u8;
        s.last_sect = x.below(9) as u8;
    }
    r
}

/// A vrng request of any shape.
fn rng_request(x: &mut Rand, own: &[GrantRef]) -> RngRequest {
    RngRequest {
        id: x.next(),
        gref: if x.below(3) == 0 {
            GrantRef(x.next() as u32)
        } else {
            own[x.below(own.len() as u64) as usize]
        },
        offset: x.below(4200) as u16,
        len: x.below(4200) as u16,
    }
}

pub fn run(c: &Ctx, mut disk: Blkfront, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let mut peer = None;
    if let Some(id) = cmdline::get(c.cmd, "until").and_then(cmdline::parse_u64) {
        match bench_order::Peer::watch(xb, id) {
            Ok(p) => peer = Some(p),
            Err(e) => fails.push(format!("cannot watch d{id}: {e}")),
        }
        bench_order::announce_done(c.si);
    }
    let mut x = Rand(cmdline::get_u64(c.cmd, "seed", 0x5c21_bb1e, 1, u64::MAX).unwrap_or(0x5c21_bb1e));
    let mut rng = match Rng::connect(xb, 60_000_000_000) {
        Ok(r) => Some(r),
        Err(e) => {
            println!("ring-scribble: no random-number device ({e}); the disk's ring only");
            None
        }
    };
    let sectors = disk.info.sectors;
    let raw = disk.raw();
    // Pages of ours granted to dom0: some requests name them, so some requests are good.
    let pages: Vec<Page> = (0..8).filter_map(|_| mm::alloc_page().ok()).collect();
    let own: Vec<GrantRef> =
        pages.iter().filter_map(|p| gnttab::grant_access(raw.backend, p.mfn, false).ok()).collect();
    if own.is_empty() {
        return println!("TEST ring-scribble FAIL no grants");
    }
    let blk = Target {
        page: raw.ring,
        port: raw.port,
        slot: hypercall_abi::io::ring::slot_size::<BlkifRequest, hypercall_abi::io::blkif::BlkifResponse>(),
        size: BLK_RING_SIZE,
    };
    let rng_raw = rng.as_mut().and_then(|r| r.raw());
    let (rng_target, rng_own) = match rng_raw {
        Some((chan, grefs)) => (
            Some(Target {
                page: &chan.mem,
                port: chan.port(),
                slot: hypercall_abi::io::ring::slot_size::<RngRequest, hypercall_abi::io::rngif::RngResponse>(
                ),
                size: RNG_RING_SIZE,
            }),
            grefs.to_vec(),
        ),
        None => (None, Vec::new()),
    };
    let mut n = Counts { changes: 0, published: 0, thrown: 0 };
    let deadline = time::now_ns().saturating_add(UNTIL_NS);
    println!(
        "ring-scribble: scribbling over the vbd ring{}",
        if rng_target.is_some() { " and the vrng ring" } else { "" }
    );
    loop {
        match &rng_target {
            Some(t) if x.below(4) == 0 => {
                let r = rng_request(&mut x, &rng_own);
                scribble(t, &mut x, r.as_bytes(), &mut n);
            }
            _ => {
                let r = blk_request(&mut x, &own, sectors);
                scribble(&blk, &mut x, r.as_bytes(), &mut n);
            }
        }
        if !n.changes.is_multiple_of(1024) || n.changes < MIN_CHANGES {
            continue;
        }
        let Some(p) = peer.as_mut() else { break };
        if p.done(xb) {
            println!("ring-scribble: the neighbour is done");
            break;
        }
        if time::now_ns() >= deadline {
            fails.push(String::from("the neighbour never finished"));
            break;
        }
    }
    println!(
        "ring-scribble: {} changes ({} requests published, {} bytes thrown)",
        n.changes, n.published, n.thrown
    );
    // The rings are dom0's to tear down when this domain goes; the devices are not closed
    // politely (their rings hold garbage).
    core::mem::forget(rng);
    core::mem::forget(disk);
    report("ring-scribble", &fails, format_args!("{} changes to two rings, dom0 still serving", n.changes));
}
