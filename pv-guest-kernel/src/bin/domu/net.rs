//! The demo domU's use of its vif: up at `10.0.2.(14 + domid)`, dom0's greeting fetched over
//! the switch (the HTTP client), then, with `serve=<s>`, an HTTP server the host reaches
//! through QEMU's port forward (`cargo xtask run` passes it and fetches the page itself).

use pv_guest_kernel::net::{self, http, Stack};
use pv_guest_kernel::netfront::{drive, NetFront};
use pv_guest_kernel::xenbus::{Transport, TxId, Xenbus};
use pv_guest_kernel::{println, time};

/// The domU demo: brings its vif up at `10.0.2.(14 + domid)`, fetches dom0's greeting over
/// the switch (a client), then serves HTTP for `serve=<s>` seconds (`cargo xtask run` passes
/// it and forwards a host port here; 0, the default, skips serving) or until `/bye`.
pub fn run<T: Transport>(xb: &mut Xenbus<T>, cmd: &str) {
    let domid =
        xb.read_string(TxId::NONE, "domid").ok().and_then(|d| d.trim().parse::<u16>().ok()).unwrap_or(1);
    let nf = match NetFront::connect(xb, 0) {
        Ok(n) => n,
        Err(e) => {
            println!("domU: no network device ({e})");
            return;
        }
    };
    let ip = net::domu_ip(domid);
    let mac = nf.mac;
    let addr = net::Addr { ip, prefix: 24, gateway: Some(net::GATEWAY) };
    let mut stack = Stack::new(nf, mac, addr, time::rdtsc(), time::now_ns());
    let dotted = |ip: [u8; 4]| alloc::format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
    println!("domU: vif {} up at {}", hypercall_abi::io::netif::MacDisplay(mac), dotted(ip));
    let sec = 1_000_000_000;
    match http::Client::get(&mut stack, net::DOM0_IP, 80, "/", 40001, time::now_ns()) {
        Ok(mut c) => {
            let mut r = None;
            drive(&mut stack, time::now_ns() + 10 * sec, |st, now| {
                r = c.poll(st, now, 10 * sec);
                r.is_some()
            });
            match r {
                Some(Ok(f)) => println!(
                    "domU: GET http://{}/ -> {} {}",
                    dotted(net::DOM0_IP),
                    f.status,
                    core::str::from_utf8(&c.preview).unwrap_or("?").trim()
                ),
                Some(Err(e)) => println!("domU: GET http://{}/ failed: {e}", dotted(net::DOM0_IP)),
                None => println!("domU: GET http://{}/: no answer", dotted(net::DOM0_IP)),
            }
        }
        Err(e) => println!("domU: GET http://{}/: {e}", dotted(net::DOM0_IP)),
    }
    let secs = pv_guest_kernel::cmdline::get_u64(cmd, "serve", 0, 0, 3600).unwrap_or(0);
    if secs > 0 {
        let mut srv = http::Server::new(&mut stack, 80, 4, "domU");
        println!("domU: http server listening on {}:80 for {secs} s (or until /bye)", dotted(ip));
        drive(&mut stack, time::now_ns() + secs * sec, |st, now| {
            srv.poll(st, now);
            srv.stopped()
        });
        // The last answer goes out before the device closes.
        let until = time::now_ns() + sec / 2;
        drive(&mut stack, until, |st, now| {
            srv.poll(st, now);
            now >= until
        });
        println!("domU: http server served {} requests", srv.stats.requests);
    }
    if let Err(e) = stack.dev.disconnect(xb) {
        println!("domU: closing the network device: {e}");
    }
}
