//! The fuzzer's neighbour (`scenario=fuzz-disk peer=<fuzzer domid>`) and the hand-shakes
//! between the two: the neighbour connects its virtual disk, writes a pattern over 16 places,
//! flushes, reads it back and compares — round after round, each with a new seed — from
//! before the fuzzer starts until the fuzzer is done or gone. It announces
//! `data/fuzz-disk-ready` after its first round, which the fuzzer waits for, so the disk is
//! busy throughout the campaign; it stops when the fuzzer has published `data/fuzz-done` or
//! its domain is gone (its `data/fuzz-running` with it). At the end it prints the last round's seed and the places it
//! wrote, so the host can check the image file itself.
//!
//! Next to a guest that knows none of these hand-shakes (Linux, tests/tests/linux_beside.rs),
//! `until-released=<n>` replaces them: the neighbour watches `@releaseDomain` (dom0's
//! toolstack must grant it, `release-watch=`), does its rounds until the event fires and then
//! `n` more, so its disk is shown working after the other domain is gone. The peer's own
//! nodes cannot tell: a domU may not read `/local/domain`, so xenstored answers `EACCES` for
//! a missing `/local/domain/<peer>` just as for one that is there (as Xen's xenstored does).
//! `crash-on=<path>` makes it the one that goes: once it can read `<path>` (a node the peer
//! made readable to it), it crashes itself with writes in flight.

use super::blk;
use super::report;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::xs_wire::RELEASE_DOMAIN;
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::blkfront::{Blkfront, SectorBuf};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::xenbus::{RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, println, time};

/// Sectors per chunk (8 KiB) and chunks per round.
pub const CHUNK: u64 = 16;
pub const CHUNKS: usize = 16;
/// What the neighbour publishes when its disk is busy, and the fuzzer when it is done.
const READY_NODE: &str = "data/fuzz-disk-ready";
const DONE_NODE: &str = "data/fuzz-done";
/// What the fuzzer publishes when it starts: its own node, so it goes when the domain does.
const RUNNING_NODE: &str = "data/fuzz-running";
/// The neighbour's answer: it has seen the fuzzer running and watches for it to go.
const WATCHING_NODE: &str = "data/fuzz-disk-watching";
/// The neighbour's answer to `data/fuzz-done`: it has seen it (so the fuzzer may go).
const FINISHED_NODE: &str = "data/fuzz-disk-finished";
/// Where `crash-on=` writes just before the crash (the image of a crashed neighbour is not
/// checked, so these may land on its chunks; a disk of 64 MiB or more holds them all).
const CRASH_SECTOR: u64 = 65536;
/// The token of the neighbour's `@releaseDomain` watch.
const RELEASED_TOKEN: &str = "fuzz-disk-released";
/// How long either side waits for the other at the start.
const SETUP_NS: u64 = 120_000_000_000;
/// How long the neighbour keeps going without hearing that the fuzzer is done.
const MAX_NS: u64 = 3 * 3600 * 1_000_000_000;

/// The fuzzer's side: learns its own domain id and, given a neighbour, waits until its disk
/// is busy.
pub fn wait_until_ready(si: &StartInfo, peer: Option<DomId>) -> Result<DomId, Errno> {
    let deadline = time::now_ns() + SETUP_NS;
    let mut xb = super::bench_order::connect_answered(si, deadline)?;
    let me = xb.read_string(TxId::NONE, "domid")?;
    let me = cmdline::parse_u64(me.trim()).map(|d| DomId(d as u16)).ok_or(Errno::EIO)?;
    if let Some(p) = peer {
        if !super::bench_order::wait_for(si, u64::from(p.0), READY_NODE, SETUP_NS)? {
            return Err(Errno::ETIMEDOUT);
        }
        super::bench_order::announce(si, RUNNING_NODE)?;
        if !super::bench_order::wait_for(si, u64::from(p.0), WATCHING_NODE, SETUP_NS)? {
            return Err(Errno::ETIMEDOUT);
        }
        println!("fuzz: the neighbour d{} is doing disk I/O", p.0);
    }
    Ok(me)
}

/// The fuzzer's side at the end: says it is done and waits until the neighbour has seen it
/// (otherwise the neighbour might only notice the domain gone).
pub fn announce_done(si: &StartInfo, peer: Option<DomId>) -> Result<(), Errno> {
    super::bench_order::announce(si, DONE_NODE)?;
    match peer {
        Some(p) if !super::bench_order::wait_for(si, u64::from(p.0), FINISHED_NODE, SETUP_NS)? => {
            Err(Errno::ETIMEDOUT)
        }
        _ => Ok(()),
    }
}

/// The neighbour.
pub fn run(si: &StartInfo) {
    let cmd = si.cmdline();
    let seed = cmdline::get_u64(cmd, "seed", 7, 0, u64::MAX).unwrap_or(7);
    let Some(peer) = cmdline::get(cmd, "peer").and_then(cmdline::parse_u64) else {
        println!("TEST fuzz-disk FAIL no peer=<fuzzer domid>");
        return;
    };
    let Some(mut xb) = blk::connect_xenstore(si) else {
        println!("TEST fuzz-disk FAIL no xenstore connection");
        return;
    };
    let mut disk = match Blkfront::connect(&mut xb, blk::SETUP_NS) {
        Ok(d) => d,
        Err(e) => {
            println!("TEST fuzz-disk FAIL no virtual disk: {e}");
            return;
        }
    };
    let slots = disk.info.sectors / CHUNK;
    if slots < CHUNKS as u64 {
        println!("TEST fuzz-disk FAIL the disk is too small ({} sectors)", disk.info.sectors);
        return;
    }
    let chosen: Vec<u64> = blk::scattered_slots(seed, slots, CHUNKS).iter().map(|s| s * CHUNK).collect();
    let list: Vec<String> = chosen.iter().map(|s| format!("{s}")).collect();
    println!("fuzz-disk: chunks {}", list.join(" "));
    let Some(mut buf) = SectorBuf::new(CHUNK as usize * 512) else {
        println!("TEST fuzz-disk FAIL no memory");
        return;
    };
    let mut want = alloc::vec![0u8; CHUNK as usize * 512];
    let mut fails: Vec<String> = Vec::new();
    let t0 = time::now_ns();
    let done_path = format!("/local/domain/{peer}/{DONE_NODE}");
    let running_path = format!("/local/domain/{peer}/{RUNNING_NODE}");
    let until_released = cmdline::get(cmd, "until-released")
        .map(|_| cmdline::get_u64(cmd, "until-released", 0, 0, 1 << 20).unwrap_or(0));
    if until_released.is_some() {
        // The watch fires once at once (after any event queued for the disk's own watches);
        // later events are releases.
        let first = xb.watch(RELEASE_DOMAIN, RELEASED_TOKEN).and_then(|()| loop {
            if xb.wait_watch_event()?.token == RELEASED_TOKEN {
                break Ok(());
            }
        });
        if let Err(e) = first {
            println!("TEST fuzz-disk FAIL cannot watch {RELEASE_DOMAIN}: {e}");
            return;
        }
    }
    let crash_on = cmdline::get(cmd, "crash-on");
    // The round after which a release was seen.
    let mut released_at = None;
    let mut round = 0u64;
    let mut peer_done = "";
    loop {
        let rs = seed.wrapping_add(round);
        for &s in &chosen {
            blk::fill(&mut buf, rs, s);
            if let Err(e) = disk.write(s, &buf) {
                fails.push(format!("round {round}: write at sector {s}: {e}"));
            }
        }
        if let Err(e) = disk.flush() {
            fails.push(format!("round {round}: flush: {e}"));
        }
        for &s in &chosen {
            buf.fill(0xa5);
            if let Err(e) = disk.read(s, &mut buf) {
                fails.push(format!("round {round}: read at sector {s}: {e}"));
                continue;
            }
            blk::fill(&mut want, rs, s);
            if *buf != want[..] {
                fails.push(format!("round {round}: the chunk at sector {s} reads back wrong"));
            }
        }
        round += 1;
        if !fails.is_empty() {
            break;
        }
        if let Some(more) = until_released {
            if round == 1 {
                println!("fuzz-disk: busy (round 1 done), watching {RELEASE_DOMAIN}");
            }
            if let Some(path) = crash_on.filter(|p| xb.read(TxId::NONE, p).is_ok()) {
                println!("fuzz-disk: {path} readable after {round} rounds");
                let who = "fuzz-disk:";
                if let Err(e) = blk::crash_with_writes_in_flight(&mut disk, CRASH_SECTOR, who) {
                    fails.push(format!("cannot crash with writes in flight: {e}"));
                    break;
                }
            }
            if released_at.is_none() && released(&mut xb) {
                released_at = Some(round);
                peer_done = "gone";
                println!("fuzz-disk: {RELEASE_DOMAIN} fired after {round} rounds: d{peer} gone");
            }
            let ends = released_at.is_some_and(|r| round >= r + more);
            if ends || time::now_ns() - t0 > MAX_NS {
                break;
            }
            continue;
        }
        if round == 1 {
            // The hand-shake: we are busy; the fuzzer answers that it runs (a node of its own,
            // which goes with its domain); we answer that we watch it; then it starts.
            if let Err(e) = super::bench_order::announce(si, READY_NODE) {
                fails.push(format!("cannot announce {READY_NODE}: {e}"));
                break;
            }
            let deadline = time::now_ns() + SETUP_NS;
            while xb.read(TxId::NONE, &running_path).is_err() {
                if time::now_ns() > deadline {
                    fails.push(format!("d{peer} never said it runs"));
                    break;
                }
                let _ = time::sleep(1_000_000);
            }
            if let Err(e) = super::bench_order::announce(si, WATCHING_NODE) {
                fails.push(format!("cannot announce {WATCHING_NODE}: {e}"));
            }
            println!("fuzz-disk: busy (round 1 done), d{peer} runs");
        }
        // The fuzzer is done once its done node is there, or gone once its running node is
        // not (xenstored removes a domain's own nodes when it goes).
        match (xb.read(TxId::NONE, &done_path), xb.read(TxId::NONE, &running_path)) {
            (Ok(_), _) => peer_done = "done",
            (_, Ok(_)) => {}
            (_, Err(_)) => peer_done = "gone",
        }
        if round.is_multiple_of(256) {
            println!("fuzz-disk: round {round}");
        }
        if !fails.is_empty() || !peer_done.is_empty() || time::now_ns() - t0 > MAX_NS {
            break;
        }
    }
    if peer_done == "done" {
        if let Err(e) = super::bench_order::announce(si, FINISHED_NODE) {
            fails.push(format!("cannot announce {FINISHED_NODE}: {e}"));
        }
    }
    let secs = (time::now_ns() - t0) / 1_000_000_000;
    println!(
        "fuzz-disk: last seed {} after {round} rounds, d{peer} {peer_done}",
        seed.wrapping_add(round - 1)
    );
    if peer_done.is_empty() && fails.is_empty() {
        fails.push(format!("stopped after {secs} s without hearing from d{peer}"));
    }
    let _ = disk.disconnect(&mut xb, 10_000_000_000);
    let released = released_at.map_or(String::new(), |r| format!(" released_at={r}"));
    report(
        "fuzz-disk",
        &fails,
        format_args!("rounds={round} mib={} secs={secs}{released}", round * CHUNKS as u64 * CHUNK / 2048),
    );
}

/// Whether `@releaseDomain` fired since the last look (other watches' events are not ours).
fn released(xb: &mut Xenbus<RingTransport>) -> bool {
    let mut seen = false;
    while let Ok(Some(e)) = xb.next_watch_event() {
        seen |= e.token == RELEASED_TOKEN;
    }
    seen
}
