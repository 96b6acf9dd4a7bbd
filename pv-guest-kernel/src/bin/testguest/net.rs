//! Network scenarios (`scenario=net-*`), over netfront → dom0's netback and switch → the NIC
//! (QEMU's user network, reachable from the host through its port forwards) or another domU:
//!
//! * `net-serve`: an HTTP server (and TCP echo) on this domU's address until a client asks
//!   for `/bye` (or `serve=<s>` seconds pass): the host's tests fetch and upload through it
//!   and check the bytes themselves;
//! * `net-fetch peer=<ip> bytes=<n>`: fetches `/bytes/<n>` from another domU's server through
//!   the switch, checks the pattern and prints its hash for the host to compare, then asks
//!   the peer for `/bye`;
//! * `net-hostile`: plays a bad frontend on the raw tx ring — a runt, an over-long frame,
//!   fragments larger than their packet, a fragment leaving its page, an unknown grant, a
//!   grant made to another domain, a chain of 19 slots, unrequested extra info — each must be
//!   answered `ERROR` (`NULL` for the extra slot) with a good frame after it answered
//!   `OKAY`; then floods spoofed and broadcast frames, and finally breaks the ring's producer
//!   index, which must make dom0 close the vif (dom0 and the other domUs carry on).
//!
//! Addresses: `ip=<a.b.c.d>`, default `10.0.2.(14 + domid)`.

use super::{report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::netif::{netif_rsp, nettxf, MacDisplay, NetifExtraInfo, NetifTxRequest};
use hypercall_abi::io::ring::{RingMemory, REQ_PROD_OFFSET};
use hypercall_abi::{DomId, GrantRef};
use pv_guest_kernel::net::{self, http, Stack};
use pv_guest_kernel::netfront::{drive, NetFront};
use pv_guest_kernel::split::kernel::KernelOps;
use pv_guest_kernel::xenbus::{self, RingTransport, TxId, Xenbus};
use pv_guest_kernel::{cmdline, gnttab, mm, println, time};

/// How long a scenario waits for dom0 (xenstore, the device).
const SETUP_NS: u64 = 60_000_000_000;
const SEC: u64 = 1_000_000_000;

/// What a scenario's body does with the stack; it hands the stack back to be disconnected
/// (or keeps it, having broken the device).
type Body = fn(Stack<NetFront>, &mut Xenbus<RingTransport>, &Ctx) -> Option<Stack<NetFront>>;

/// Connects the scenario's vif, brings a stack up on it at its address, runs `body`, then
/// closes the device.
pub fn with_stack(c: &Ctx, body: Body) {
    let (scenario, cmd) = (c.name, c.cmd);
    let mut xb = match xenbus::connect(c.si) {
        Ok(xb) => xb,
        Err(e) => {
            println!("TEST {scenario} FAIL no xenstore: {e}");
            return;
        }
    };
    let domid =
        xb.read_string(TxId::NONE, "domid").ok().and_then(|d| d.trim().parse::<u16>().ok()).unwrap_or(1);
    let nf = match NetFront::connect(&mut xb, SETUP_NS) {
        Ok(n) => n,
        Err(e) => {
            println!("TEST {scenario} FAIL no network device: {e}");
            return;
        }
    };
    let ip = cmdline::get(cmd, "ip").and_then(net::parse_ip).unwrap_or(net::domu_ip(domid));
    println!(
        "{scenario}: vif {} connected (backend d{}), address {}",
        MacDisplay(nf.mac),
        nf.backend().0,
        dotted(ip)
    );
    let mac = nf.mac;
    let addr = net::Addr { ip, prefix: 24, gateway: Some(net::GATEWAY) };
    let stack = Stack::new(nf, mac, addr, time::rdtsc() ^ u64::from(domid), time::now_ns());
    if let Some(stack) = body(stack, &mut xb, c) {
        let s = stack.dev.stats();
        println!(
            "{scenario}: netfront sent {} frames/{} bytes ({} errors), received {} frames/{} bytes ({} empty)",
            s.tx_packets, s.tx_bytes, s.tx_errors, s.rx_packets, s.rx_bytes, s.rx_errors
        );
        if let Err(e) = stack.dev.disconnect(&mut xb) {
            println!("{scenario}: disconnect: {e}");
        }
    }
}

fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

pub fn serve(
    mut stack: Stack<NetFront>,
    _xb: &mut Xenbus<RingTransport>,
    c: &Ctx,
) -> Option<Stack<NetFront>> {
    let cmd = c.cmd;
    let ip = stack.iface.ipv4_addr().map_or([0; 4], |a| a.octets());
    let secs = cmdline::get_u64(cmd, "serve", 120, 1, 3600).unwrap_or(120);
    let mut srv = http::Server::new(&mut stack, 80, 4, "net-serve");
    let mut echo = http::Echo::new(&mut stack, 7, 2);
    println!("net-serve: listening on {}:80 (http) and :7 (echo)", dotted(ip));
    let done = drive(&mut stack, time::now_ns() + secs * SEC, |st, now| {
        srv.poll(st, now);
        echo.poll(st);
        srv.stopped()
    });
    // Let the last answer (to /bye) go out before the device closes.
    let until = time::now_ns() + SEC;
    drive(&mut stack, until, |st, now| !srv.poll(st, now) && st.dev.stats().tx_packets > 0 && now >= until);
    let st = srv.stats;
    let mut fails = Vec::new();
    if !done {
        fails.push(format!("no /bye within {secs} s"));
    }
    if let Some(why) = stack.dev.broken() {
        fails.push(format!("backend broke the protocol: {why}"));
    }
    report(
        "net-serve",
        &fails,
        format_args!(
            "{} requests ({} bad), {} bytes in, {} bytes out, {} echoed",
            st.requests, st.bad, st.bytes_in, st.bytes_out, echo.bytes
        ),
    );
    Some(stack)
}

pub fn fetch(
    mut stack: Stack<NetFront>,
    _xb: &mut Xenbus<RingTransport>,
    c: &Ctx,
) -> Option<Stack<NetFront>> {
    let cmd = c.cmd;
    let Some(peer) = cmdline::get(cmd, "peer").and_then(net::parse_ip) else {
        println!("TEST net-fetch FAIL no peer=<ip>");
        return Some(stack);
    };
    let n = cmdline::get_u64(cmd, "bytes", 1 << 20, 1, 1 << 30).unwrap_or(1 << 20);
    let mut fails = Vec::new();
    // The peer may still be connecting: retry a refused connection for a while.
    let deadline = time::now_ns() + 60 * SEC;
    let mut got = None;
    let mut port = 40000;
    while got.is_none() && time::now_ns() < deadline {
        port += 1;
        let now = time::now_ns();
        let mut c = match http::Client::get(&mut stack, peer, 80, &format!("/bytes/{n}"), port, now) {
            Ok(c) => c,
            Err(e) => {
                fails.push(format!("connect: {e}"));
                break;
            }
        };
        let t0 = time::now_ns();
        let mut r = None;
        drive(&mut stack, deadline, |st, now| {
            r = c.poll(st, now, 30 * SEC);
            r.is_some()
        });
        match r {
            Some(Ok(f)) => got = Some((f, time::now_ns().saturating_sub(t0))),
            Some(Err("connection refused")) => {
                let _ = pv_guest_kernel::time::sleep(200_000_000);
            }
            Some(Err(e)) => {
                fails.push(format!("GET: {e}"));
                break;
            }
            None => break,
        }
    }
    let detail = match got {
        Some((f, ns)) => {
            if f.status != 200 || f.len != n || !f.pattern {
                fails.push(format!("status {} with {} bytes (pattern {})", f.status, f.len, f.pattern));
            }
            let kib_s = f.len * 1_000_000_000 / 1024 / ns.max(1);
            format!(
                "{} bytes from {} fnv={:016x} in {} ms ({kib_s} KiB/s)",
                f.len,
                dotted(peer),
                f.hash,
                ns / 1_000_000
            )
        }
        None => {
            fails.push(String::from("no answer"));
            String::new()
        }
    };
    // Tell the peer we are done.
    if let Ok(mut c) = http::Client::get(&mut stack, peer, 80, "/bye", port + 1, time::now_ns()) {
        drive(&mut stack, time::now_ns() + 10 * SEC, |st, now| c.poll(st, now, 10 * SEC).is_some());
    }
    report("net-fetch", &fails, format_args!("{detail}"));
    Some(stack)
}

/// The hostile frontend. Its good frames go to the broadcast address from its own MAC (an
/// ARP-less IPv4 ethertype with a payload nobody parses), so they are switched and counted
/// but disturb no one.
pub fn hostile(
    mut stack: Stack<NetFront>,
    xb: &mut Xenbus<RingTransport>,
    c: &Ctx,
) -> Option<Stack<NetFront>> {
    let cmd = c.cmd;
    let mac = stack.dev.mac;
    let backend = stack.dev.backend();
    let mut fails: Vec<String> = Vec::new();
    let Some((chan, _)) = stack.dev.raw() else {
        println!("TEST net-hostile FAIL no raw ring");
        return Some(stack);
    };
    // A frame in the first tx buffer, the others for junk.
    let frame_page = mm::alloc_page().ok()?;
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    // SAFETY: a fresh page of ours in the direct map.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), frame_page.va as *mut u8, frame.len()) };
    let good_gref = gnttab::grant_access(backend, frame_page.mfn, true).ok()?;
    // A grant of ours made to someone else (domain 0x7fe0 does not exist).
    let foreign = gnttab::grant_access(DomId(0x7fe0), frame_page.mfn, true).ok()?;
    let r = |size, offset, flags, gref| NetifTxRequest { gref, offset, flags, id: 0, size };
    let extra = NetifTxRequest::from_extra_info(&NetifExtraInfo::new_gso(1448, 1, 0, 0));
    let cases: Vec<(&str, Vec<NetifTxRequest>)> = alloc::vec![
        ("runt", alloc::vec![r(13, 0, 0, good_gref)]),
        ("over-long", alloc::vec![r(1519, 0, 0, good_gref)]),
        ("fragments-overflow", alloc::vec![r(64, 0, nettxf::MORE_DATA, good_gref), r(65, 0, 0, good_gref)]),
        ("crosses-page", alloc::vec![r(64, 4090, 0, good_gref)]),
        ("unknown-grant", alloc::vec![r(64, 0, 0, GrantRef(60_000))]),
        ("foreign-grant", alloc::vec![r(64, 0, 0, foreign)]),
        (
            "19-slots",
            (0..19)
                .map(|i| r(
                    if i == 0 { 64 } else { 1 },
                    0,
                    if i < 18 { nettxf::MORE_DATA } else { 0 },
                    good_gref
                ))
                .collect(),
        ),
        ("extra-info", alloc::vec![r(64, 0, nettxf::EXTRA_INFO, good_gref), extra]),
    ];
    let mut id = 1000u16;
    for (what, slots) in &cases {
        let mut ids = Vec::new();
        for s in slots.iter().chain(core::iter::once(&r(64, 0, 0, good_gref))) {
            let mut s = *s;
            if s != extra {
                s.id = id;
                ids.push(id);
                id += 1;
            }
            if chan.push(&s).is_err() {
                fails.push(format!("{what}: ring full"));
            }
        }
        chan.kick(&mut KernelOps);
        // Collect one response per slot.
        let mut rsps = Vec::new();
        let deadline = time::now_ns() + 10 * SEC;
        while rsps.len() < slots.len() + 1 && time::now_ns() < deadline {
            match chan.take() {
                Ok(Some(x)) => rsps.push(x),
                Ok(None) => {
                    let _ = pv_guest_kernel::split::kernel::wait_responses(chan, Some(deadline));
                }
                Err(_) => {
                    fails.push(format!("{what}: backend broke the tx ring"));
                    break;
                }
            }
        }
        let want_errors = slots.len() - usize::from(*what == "extra-info");
        let errors = rsps.iter().filter(|x| x.status == netif_rsp::ERROR).count();
        let nulls = rsps.iter().filter(|x| x.status == netif_rsp::NULL).count();
        let last_ok = rsps.last().is_some_and(|x| x.status == netif_rsp::OKAY && Some(&x.id) == ids.last());
        if rsps.len() != slots.len() + 1
            || errors != want_errors
            || !last_ok
            || nulls != usize::from(*what == "extra-info")
        {
            fails.push(format!("{what}: responses {:?}", rsps.iter().map(|x| x.status).collect::<Vec<_>>()));
        }
    }
    println!("net-hostile: {} malformed packets refused, a good one after each", cases.len());
    // A flood: spoofed and broadcast frames as fast as the ring takes them.
    let secs = cmdline::get_u64(cmd, "flood", 3, 0, 600).unwrap_or(3);
    println!("net-hostile: flooding for {secs} s");
    let flood_until = time::now_ns() + secs * SEC;
    let mut flooded = 0u64;
    let mut spoofed = frame;
    spoofed[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0x00, 0x02, 0x00]);
    // SAFETY: as above; the backend copies at most 128 bytes and only after the push.
    unsafe { core::ptr::copy_nonoverlapping(spoofed.as_ptr(), (frame_page.va + 2048) as *mut u8, 64) };
    while time::now_ns() < flood_until {
        while chan.take().ok().flatten().is_some() {}
        for k in 0..32 {
            let off = if k % 2 == 0 { 0 } else { 2048 };
            id = id.wrapping_add(1);
            if chan.push(&NetifTxRequest { gref: good_gref, offset: off, flags: 0, id, size: 64 }).is_err() {
                break;
            }
            flooded += 1;
        }
        chan.kick(&mut KernelOps);
        pv_guest_kernel::hypercall::yield_cpu();
    }
    println!("net-hostile: flooded {flooded} frames (half with a neighbour's MAC)");
    // Finally break the ring: a producer index far ahead.
    let prod = chan.mem.load_u32_acquire(REQ_PROD_OFFSET);
    chan.mem.store_u32_release(REQ_PROD_OFFSET, prod.wrapping_add(5000));
    chan.notify(&mut KernelOps);
    // dom0 closes the device (its backend state goes Closing): wait for that, then close.
    let backend_state = "/local/domain/0/backend/vif";
    let deadline = time::now_ns() + 10 * SEC;
    let mut closed = false;
    while time::now_ns() < deadline && !closed {
        let me = xb.read_string(TxId::NONE, "domid").unwrap_or_default();
        let st =
            xb.read_string(TxId::NONE, &format!("{backend_state}/{}/0/state", me.trim())).unwrap_or_default();
        closed = st.trim() == "5" || st.trim() == "6";
        let _ = time::sleep(50_000_000);
    }
    if !closed {
        fails.push(String::from("dom0 did not close the broken vif"));
    }
    for g in [foreign, good_gref] {
        let _ = gnttab::end_access(g);
    }
    report(
        "net-hostile",
        &fails,
        format_args!(
            "{} malformed packets refused, {flooded} frames flooded, broken ring closed",
            cases.len()
        ),
    );
    Some(stack)
}
