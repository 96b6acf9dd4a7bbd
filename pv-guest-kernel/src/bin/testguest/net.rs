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
        // The frontend's figures as `key=value` fields; the host tests compare them with dom0's.
        println!(
            "{scenario}: netfront tx_packets={} tx_bytes={} tx_errors={} rx_packets={} rx_bytes={} rx_errors={}",
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
            // What the host checks against the pattern it knows.
            println!("net-fetch: bytes={} fnv={:016x}", f.len, f.hash);
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
    // Packets the backend refused (answered with an error), as dom0 counts them.
    let mut refused = 0u64;
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
        refused += u64::from(errors > 0);
        let last_ok = rsps.last().is_some_and(|x| x.status == netif_rsp::OKAY && Some(&x.id) == ids.last());
        if rsps.len() != slots.len() + 1
            || errors != want_errors
            || !last_ok
            || nulls != usize::from(*what == "extra-info")
        {
            fails.push(format!("{what}: responses {:?}", rsps.iter().map(|x| x.status).collect::<Vec<_>>()));
        }
    }
    println!("net-hostile: {} malformed packets sent, a good one after each: refused={refused}", cases.len());
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

/// Ethertype of the small-packet flood (IEEE's local experimental type: nobody parses it).
const FLOOD_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Size of a flood frame: the Ethernet minimum (without FCS).
const FLOOD_FRAME: usize = 60;

/// The network benchmark (`cargo xtask bench`), two domains:
///
/// * `role=sink` (the first domU): HTTP and echo for the host's throughput and round-trip
///   measurements, until the host says `/bye`; then it announces `data/bench-done` and counts
///   the small-packet flood the other domU sends it (`net.pps.domu_domu`: frames delivered per
///   second, from the first flood frame to the last), then serves the other domU's fetch and
///   echo until its `/bye`;
/// * `role=flood` (given `after=<sink's domid>` and `peer=<ip>`): waits for the sink's turn to
///   end, floods it with minimum-size frames for `flood=<s>` seconds (default 2) straight
///   through netfront, then fetches `/bytes/<n>` from it (`net.tcp.domu_domu`, KiB/s) and
///   measures 1-byte round trips through its echo service (`net.rtt.domu_domu`, ns).
pub fn bench(
    mut stack: Stack<NetFront>,
    _xb: &mut Xenbus<RingTransport>,
    c: &Ctx,
) -> Option<Stack<NetFront>> {
    match cmdline::get(c.cmd, "role") {
        Some("flood") => {
            super::bench_order::wait_after(c.si);
            bench_flood(&mut stack, c.cmd);
        }
        _ => bench_sink(&mut stack, c),
    }
    Some(stack)
}

fn bench_sink(stack: &mut Stack<NetFront>, c: &Ctx) {
    let mut srv = http::Server::new(stack, 80, 4, "net-bench");
    let mut echo = http::Echo::new(stack, 7, 2);
    println!("net-bench: ready, serving the host");
    let serve = |stack: &mut Stack<NetFront>, srv: &mut http::Server, echo: &mut http::Echo| {
        drive(stack, time::now_ns() + 600 * SEC, |st, now| {
            srv.poll(st, now);
            echo.poll(st);
            srv.stopped()
        })
    };
    if !serve(stack, &mut srv, &mut echo) {
        println!("TEST net-bench FAIL the host never said /bye");
        return;
    }
    super::bench_order::announce_done(c.si);
    // The flood: read straight off netfront (the stack is not polled meanwhile), counting
    // the flood's frames from the first to the last; it ends after a second without one.
    let (frames, ns) = count_flood(stack, time::now_ns() + 120 * SEC);
    let pps = frames * SEC / ns.max(1);
    println!("BENCH name=net.pps.domu_domu unit=pps n=1 min={pps} median={pps} p99={pps}");
    println!("net-bench: {frames} flood frames in {} ms", ns / 1_000_000);
    // The flooder's fetch and echo, until its /bye.
    srv.resume();
    let done = serve(stack, &mut srv, &mut echo);
    let fails: Vec<String> = if done { Vec::new() } else { alloc::vec![String::from("no second /bye")] };
    report("net-bench", &fails, format_args!("{frames} flood frames, {} echoed", echo.bytes));
}

/// Counts flood frames received until a second passes without one (after the first), or
/// `deadline`: how many, and the nanoseconds from the first to the last.
fn count_flood(stack: &mut Stack<NetFront>, deadline: u64) -> (u64, u64) {
    use smoltcp::phy::{Device, RxToken};
    let (mut frames, mut first, mut last) = (0u64, 0u64, 0u64);
    loop {
        let now = time::now_ns();
        while let Some((rx, _)) = stack.dev.receive(net::instant(now)) {
            if rx.consume(|f| f.get(12..14) == Some(&FLOOD_ETHERTYPE[..])) {
                let t = time::now_ns();
                if frames == 0 {
                    first = t;
                }
                frames += 1;
                last = t;
            }
        }
        stack.dev.flush();
        if now >= deadline || (frames > 0 && now.saturating_sub(last) > SEC) {
            return (frames, last.saturating_sub(first));
        }
        stack.dev.wait(Some(now + SEC / 10));
    }
}

fn bench_flood(stack: &mut Stack<NetFront>, cmd: &str) {
    use smoltcp::phy::{Device, TxToken};
    let Some(peer) = cmdline::get(cmd, "peer").and_then(net::parse_ip) else {
        return println!("TEST net-flood FAIL no peer=<ip>");
    };
    let secs = cmdline::get_u64(cmd, "flood", 2, 1, 60).unwrap_or(2);
    // The peer's MAC: the toolstack's for its domid (the last byte of its address - 14).
    let peer_mac = [0x00, 0x16, 0x3e, 0x00, peer[3].wrapping_sub(14), 0x00];
    let mut frame = [0u8; FLOOD_FRAME];
    frame[..6].copy_from_slice(&peer_mac);
    frame[6..12].copy_from_slice(&stack.dev.mac);
    frame[12..14].copy_from_slice(&FLOOD_ETHERTYPE);
    let until = time::now_ns() + secs * SEC;
    let mut sent = 0u64;
    while time::now_ns() < until {
        let now = net::instant(time::now_ns());
        let mut batch = 0;
        while batch < 32 {
            let Some(tok) = stack.dev.transmit(now) else { break };
            tok.consume(FLOOD_FRAME, |b| b.copy_from_slice(&frame));
            batch += 1;
        }
        sent += batch;
        stack.dev.flush();
        if batch == 0 {
            stack.dev.wait(Some(time::now_ns() + 1_000_000));
        }
    }
    println!("net-flood: sent {sent} frames in {secs} s");
    // A quiet gap, so the sink's count ends before any other traffic starts.
    let _ = time::sleep(3 * SEC);
    // domU to domU TCP: the sink's pattern, fetched and checked.
    let n = cmdline::get_u64(cmd, "bytes", 8 << 20, 1, 1 << 30).unwrap_or(8 << 20);
    let mut fails = Vec::new();
    let t0 = time::now_ns();
    let mut r = None;
    match http::Client::get(stack, peer, 80, &format!("/bytes/{n}"), 41000, t0) {
        Ok(mut cl) => {
            drive(stack, t0 + 120 * SEC, |st, now| {
                r = cl.poll(st, now, 120 * SEC);
                r.is_some()
            });
        }
        Err(e) => fails.push(format!("connect: {e}")),
    }
    let ns = time::now_ns().saturating_sub(t0).max(1);
    match r {
        Some(Ok(f)) if f.status == 200 && f.len == n && f.pattern => {
            let kib_s = n * SEC / 1024 / ns;
            println!("BENCH name=net.tcp.domu_domu unit=KiB/s n=1 min={kib_s} median={kib_s} p99={kib_s}");
        }
        other => fails.push(format!("fetch: {other:?}")),
    }
    // Round trips through the sink's echo service.
    match echo_rtts(stack, peer, 1000) {
        Ok(mut s) => {
            if let Some(st) = hypercall_abi::microvisor::bench::Stats::compute(&mut s) {
                println!(
                    "BENCH name=net.rtt.domu_domu unit=ns n={} min={} median={} p99={}",
                    st.n, st.min, st.median, st.p99
                );
            }
        }
        Err(e) => fails.push(format!("echo: {e}")),
    }
    if let Ok(mut cl) = http::Client::get(stack, peer, 80, "/bye", 41002, time::now_ns()) {
        drive(stack, time::now_ns() + 10 * SEC, |st, now| cl.poll(st, now, 10 * SEC).is_some());
    }
    report("net-flood", &fails, format_args!("{sent} frames flooded"));
}

/// `n` round trips of one byte through `peer`'s echo service: each in ns.
fn echo_rtts(stack: &mut Stack<NetFront>, peer: [u8; 4], n: usize) -> Result<Vec<u64>, &'static str> {
    use smoltcp::socket::tcp;
    use smoltcp::wire::IpAddress;
    let h = stack.tcp_socket();
    let cx = stack.iface.context();
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(peer[0], peer[1], peer[2], peer[3]), 7), 41001)
        .map_err(|_| "connect")?;
    stack.sockets.get_mut::<tcp::Socket>(h).set_nagle_enabled(false);
    stack.sockets.get_mut::<tcp::Socket>(h).set_ack_delay(None);
    let mut out = Vec::with_capacity(n);
    let (mut sent_at, mut waiting) = (0u64, false);
    let deadline = time::now_ns() + 60 * SEC;
    drive(stack, deadline, |st, _| {
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        if waiting && s.can_recv() {
            let mut b = [0u8; 1];
            if s.recv_slice(&mut b) == Ok(1) {
                out.push(time::now_ns().saturating_sub(sent_at));
                waiting = false;
            }
        }
        if !waiting && out.len() < n && s.can_send() {
            sent_at = time::now_ns();
            waiting = s.send_slice(&[out.len() as u8]) == Ok(1);
        }
        out.len() >= n || !s.is_open()
    });
    stack.sockets.get_mut::<tcp::Socket>(h).close();
    if out.len() < n {
        return Err("echo did not answer every byte");
    }
    Ok(out)
}
