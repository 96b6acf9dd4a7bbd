//! Random-number device scenarios (`scenario=rng-*`), against dom0's virtio-rng backend:
//!
//! * `rng-read`: reads 64 KiB (and an odd-sized piece) through the frontend and checks the
//!   bytes look random enough to have come from a device: every one of the 256 byte values
//!   appears, no 16-byte block repeats, and two reads differ;
//! * `rng-hostile`: plays a bad frontend on the raw ring — empty and oversized pieces,
//!   pieces leaving the page, a read-only grant, a grant that does not exist, one made to
//!   another domain — each must get its `-errno` while a good request after it is served;
//!   then a producer index more than a ring ahead must make the backend close the device.

use super::blk::{my_domid, wait_backend_closed};
use super::{report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::ring::{RingMemory, REQ_PROD_OFFSET, RSP_PROD_OFFSET};
use hypercall_abi::io::rngif::{RngRequest, RngResponse};
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Errno, GrantRef};
use pv_guest_kernel::rngfront::Rng;
use pv_guest_kernel::split::kernel::{wait_responses, KernelOps};
use pv_guest_kernel::xenbus::{self, RingTransport, Xenbus};
use pv_guest_kernel::{gnttab, mm, println, time};

/// How long a scenario waits for dom0 (xenstore, the device).
const SETUP_NS: u64 = 60_000_000_000;

/// Connects the scenario's random-number device, then runs `body` on it.
pub fn with_device(c: &Ctx, body: fn(Rng, &mut Xenbus<RingTransport>)) {
    let scenario = c.name;
    let mut xb = match xenbus::connect(c.si) {
        Ok(xb) => xb,
        Err(e) => {
            println!("TEST {scenario} FAIL no xenstore: {e}");
            return;
        }
    };
    let rng = match Rng::connect(&mut xb, SETUP_NS) {
        Ok(r) => r,
        Err(e) => {
            println!("TEST {scenario} FAIL no random-number device: {e}");
            return;
        }
    };
    body(rng, &mut xb);
}

pub fn read(mut rng: Rng, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let mut buf = alloc::vec![0u8; 64 * 1024];
    let t0 = time::now_ns();
    if let Err(e) = rng.read(&mut buf) {
        fails.push(format!("reading 64 KiB: {e}"));
    }
    let us = time::now_ns().saturating_sub(t0) / 1000;
    let mut seen = [false; 256];
    for &b in &buf {
        seen[b as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    if distinct != 256 {
        fails.push(format!("only {distinct} distinct byte values in 64 KiB"));
    }
    let mut blocks: Vec<&[u8]> = buf.chunks(16).collect();
    blocks.sort_unstable();
    if blocks.windows(2).any(|w| w[0] == w[1]) {
        fails.push(String::from("a 16-byte block repeats"));
    }
    // An odd size at an odd place, and a second read that must differ from the first.
    let mut odd = alloc::vec![0u8; 5001];
    match rng.read(&mut odd[3..]) {
        Ok(()) if odd[3..] == buf[..4998] => fails.push(String::from("a second read repeated the first")),
        Ok(()) if odd[..3] != [0, 0, 0] => fails.push(String::from("bytes written outside the buffer")),
        Ok(()) => {}
        Err(e) => fails.push(format!("reading 4998 bytes: {e}")),
    }
    // What the host checks dom0's count against.
    println!("rng-read: bytes={} distinct={distinct}", buf.len() + odd.len() - 3);
    if let Err(e) = rng.disconnect(xb, 10_000_000_000) {
        fails.push(format!("disconnect: {e}"));
    }
    report(
        "rng-read",
        &fails,
        format_args!("65536 bytes in {us} us, {distinct} distinct byte values, no repeated block; 4998 more at an odd offset"),
    );
}

/// Sends `reqs` at once on the raw ring and collects one response per request.
fn exchange(rng: &mut Rng, reqs: &[RngRequest]) -> Result<Vec<RngResponse>, String> {
    let (chan, _) = rng.raw().ok_or("no ring")?;
    for r in reqs {
        chan.push(r).map_err(|e| format!("push: {e}"))?;
    }
    chan.kick(&mut KernelOps);
    let deadline = time::now_ns() + 10_000_000_000;
    let mut out = Vec::new();
    while out.len() < reqs.len() {
        match chan.take() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => match wait_responses(chan, Some(deadline)) {
                Ok(true) => {}
                _ => return Err(format!("{} of {} responses", out.len(), reqs.len())),
            },
            Err(e) => return Err(format!("ring: {e}")),
        }
    }
    Ok(out)
}

pub fn hostile(mut rng: Rng, xb: &mut Xenbus<RingTransport>) {
    let mut fails: Vec<String> = Vec::new();
    let backend = rng.backend();
    let Some((_, grefs)) = rng.raw() else { return };
    let good_gref = grefs[0];
    let (Ok(ro_page), Ok(other_page)) = (mm::alloc_page(), mm::alloc_page()) else {
        println!("TEST rng-hostile FAIL no memory");
        return;
    };
    let ro = gnttab::grant_access(backend, ro_page.mfn, true).unwrap_or(GrantRef(0));
    // A grant to a domain that is not the backend.
    let other = gnttab::grant_access(DomId(DomId::FIRST_RESERVED.0 - 1), other_page.mfn, false)
        .unwrap_or(GrantRef(0));
    let unknown = GrantRef(1900);
    let req = |id, gref, offset, len| RngRequest { id, gref, offset, len };
    let cases: [(&str, RngRequest, Errno); 7] = [
        ("empty piece", req(101, good_gref, 0, 0), Errno::EINVAL),
        ("4097 bytes", req(102, good_gref, 0, 4097), Errno::EINVAL),
        ("offset 4000 + 200 bytes", req(103, good_gref, 4000, 200), Errno::EINVAL),
        ("offset 65535", req(104, good_gref, u16::MAX, 1), Errno::EINVAL),
        ("read-only grant", req(105, ro, 0, 64), Errno::EFAULT),
        ("unknown grant", req(106, unknown, 0, 64), Errno::EFAULT),
        ("grant to another domain", req(107, other, 0, 64), Errno::EFAULT),
    ];
    for (i, (what, bad, want)) in cases.iter().enumerate() {
        let good = req(900 + i as u64, good_gref, 16, 32);
        match exchange(&mut rng, &[*bad, good]) {
            Ok(rsps) => {
                if rsps[0] != RngResponse::error(bad.id, *want) {
                    fails.push(format!("{what}: got {:?}, want status -{}", rsps[0], want.0));
                }
                if rsps[1] != RngResponse::ok(good.id, 32) {
                    fails.push(format!("{what}: the good request after it got {:?}", rsps[1]));
                }
            }
            Err(e) => fails.push(format!("{what}: {e}")),
        }
    }
    // Finally a producer index more than a ring ahead: the backend must give up the ring.
    let state_path = format!("/local/domain/0/backend/vrng/{}/0/state", my_domid(xb));
    if let Some((chan, _)) = rng.raw() {
        let rsp_prod = chan.mem.load_u32_acquire(RSP_PROD_OFFSET);
        chan.mem.store_u32_release(REQ_PROD_OFFSET, rsp_prod.wrapping_add(1000));
        pv_guest_kernel::split::EventOps::notify(&mut KernelOps, chan.port());
    }
    let closed = wait_backend_closed(xb, &state_path);
    if closed.is_none() {
        fails.push(String::from("a producer index 1000 ahead did not make the backend close"));
    }
    for (g, p) in [(ro, ro_page), (other, other_page)] {
        if gnttab::end_access(g).is_err() {
            fails.push(format!("grant {} still in use after the test", g.0));
        }
        let _ = mm::free_page(p.pfn);
    }
    if let Err(e) = rng.disconnect(xb, 10_000_000_000) {
        fails.push(format!("disconnect: {e}"));
    }
    println!("rng-hostile: refused={}", cases.len());
    report(
        "rng-hostile",
        &fails,
        format_args!(
            "{} bad requests refused with their errno, good ones served, ring overrun closed the device (state {})",
            cases.len(),
            closed.map_or("-", XenbusState::name)
        ),
    );
}
