//! A domU's own check of its xenstore connection against dom0's xenstored, run by the demo
//! domU with `xstest`: what a guest may and may not do, printed one line per check as
//! `xstest: <check>: <result>` so the QEMU tests can assert each, ending with
//! `xstest: done, <n> failed`.
//!
//! The checks follow Xen's rules: a domain reads its own `name` and `domid`, writes under its
//! own `data/`, is refused (`EACCES`) outside its subtree and in its backend's directory,
//! gets `EINVAL` for an over-long path and `ENOSPC` for a value over the node quota, sees a
//! watch fire when dom0 writes (dom0 echoes `data/ping` into `data/pong`), loses a
//! conflicting transaction with `EAGAIN`, and after a malformed message (a header announcing
//! more than 4096 bytes) finds the ring's error set and reconnects.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::fmt::Debug;
use hypercall_abi::io::xs_wire::{self, XsdSockmsgType};
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::println;
use pv_guest_kernel::xenbus::{RingTransport, TxId, Xenbus};

struct Checker {
    failed: u32,
}

impl Checker {
    fn check<T: Debug + PartialEq>(&mut self, what: &str, got: Result<T, Errno>, want: Result<T, Errno>) {
        let show = |r: &Result<T, Errno>| match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => String::from(e.name()),
        };
        if got == want {
            println!("xstest: {what}: {} ok", show(&got));
        } else {
            self.failed += 1;
            println!("xstest: {what}: {} FAIL (expected {})", show(&got), show(&want));
        }
    }
}

/// The next event of the watch with `token`, skipping late events of earlier watches (the
/// console handshake's, queued before its unwatch).
fn next_event(xb: &mut Xenbus<RingTransport>, token: &str) -> Result<(String, String), Errno> {
    loop {
        let e = xb.wait_watch_event()?;
        if e.token == token {
            return Ok((e.path, e.token));
        }
    }
}

/// Runs every check; returns how many failed.
pub fn run(xb: &mut Xenbus<RingTransport>) -> u32 {
    let mut c = Checker { failed: 0 };
    let none = TxId::NONE;

    let name = xb.read_string(none, "name");
    println!("xstest: name = {}", name.as_deref().unwrap_or("?"));
    let domid = xb.read_string(none, "domid").ok().and_then(|s| s.parse::<u16>().ok());
    println!("xstest: domid = {}", domid.map_or(String::from("?"), |d| format!("{d}")));
    let home = domid.map(|d| xb.get_domain_path(DomId(d)));
    c.check(
        "domain path",
        home.clone().unwrap_or(Err(Errno::ENOENT)),
        Ok(format!("/local/domain/{}", domid.unwrap_or(0))),
    );
    if let Some(Ok(home)) = &home {
        c.check("absolute name", xb.read_string(none, &format!("{home}/name")), name.clone());
    }

    c.check("write data/hello", xb.write(none, "data/hello", b"world"), Ok(()));
    c.check("read data/hello", xb.read_string(none, "data/hello"), Ok(String::from("world")));
    c.check("mkdir data/dir", xb.mkdir(none, "data/dir"), Ok(()));
    c.check(
        "directory data",
        xb.directory(none, "data").map(|mut v| {
            v.sort();
            v
        }),
        Ok(vec![String::from("dir"), String::from("hello")]),
    );
    c.check("rm data/dir", xb.rm(none, "data/dir"), Ok(()));
    c.check("get_perms data", xb.get_perms(none, "data"), Ok(vec![format!("n{}", domid.unwrap_or(0))]));
    let d = domid.unwrap_or(0);
    c.check("set_perms data/hello", xb.set_perms(none, "data/hello", &[&format!("n{d}"), "r0"]), Ok(()));

    c.check("write outside own subtree", xb.write(none, "/local/domain/0/evil", b"x"), Err(Errno::EACCES));
    c.check("rewrite own name", xb.write(none, "name", b"evil"), Err(Errno::EACCES));
    c.check("set_perms on name", xb.set_perms(none, "name", &[&format!("n{d}")]), Err(Errno::EACCES));
    match xb.read_string(none, "console/backend") {
        Ok(be) => {
            c.check("read backend state", xb.read_string(none, &format!("{be}/state")).map(|_| ()), Ok(()));
            c.check("write backend state", xb.write(none, &format!("{be}/state"), b"6"), Err(Errno::EACCES));
            c.check(
                "rewrite backend path",
                xb.write(none, &format!("{be}/frontend"), b"/evil"),
                Err(Errno::EACCES),
            );
        }
        Err(e) => c.check("console/backend", Err::<(), _>(e), Ok(())),
    }

    let long_path = format!("data/{}", "x".repeat(3100));
    c.check("oversized path", xb.write(none, &long_path, b"v"), Err(Errno::EINVAL));
    c.check("oversized value", xb.write(none, "data/big", &[b'v'; 3000]), Err(Errno::ENOSPC));
    c.check("value over the payload limit", xb.write(none, "data/big", &[b'v'; 4096]), Err(Errno::E2BIG));
    c.check(
        "unknown request type",
        xb.request(XsdSockmsgType::GetQuota, none, &[b"\0"]).map(drop),
        Err(Errno::ENOSYS),
    );
    c.check(
        "privileged request",
        xb.request(XsdSockmsgType::Introduce, none, &[b"9\x001\x001\0"]).map(drop),
        Err(Errno::EACCES),
    );

    // A watch fired by dom0's write.
    c.check("watch data/pong", xb.watch("data/pong", "pong"), Ok(()));
    let first = next_event(xb, "pong");
    c.check("watch fires at once", first, Ok((String::from("data/pong"), String::from("pong"))));
    c.check("write data/ping", xb.write(none, "data/ping", b"hello-watch"), Ok(()));
    let ev = next_event(xb, "pong");
    c.check("watch fired by dom0", ev, Ok((String::from("data/pong"), String::from("pong"))));
    c.check("read data/pong", xb.read_string(none, "data/pong"), Ok(String::from("hello-watch")));
    c.check("unwatch data/pong", xb.unwatch("data/pong", "pong"), Ok(()));

    // A transaction that loses a race.
    c.check("write data/counter", xb.write(none, "data/counter", b"0"), Ok(()));
    let conflict = (|| {
        let tx = xb.transaction_start()?;
        xb.read(tx, "data/counter")?;
        xb.write(none, "data/counter", b"5")?;
        xb.write(tx, "data/counter", b"1")?;
        xb.transaction_end(tx, true)
    })();
    c.check("conflicting commit", conflict, Err(Errno::EAGAIN));
    let retried = xb.transaction(|xb, tx| {
        let v: u32 = xb.read_string(tx, "data/counter")?.parse().map_err(|_| Errno::EINVAL)?;
        xb.write(tx, "data/counter", format!("{}", v + 1).as_bytes())
    });
    c.check("transaction helper", retried, Ok(()));
    c.check("counter", xb.read_string(none, "data/counter"), Ok(String::from("6")));

    // A malformed message: the server stops reading the ring and says why; reconnect.
    let hdr = xs_wire::XsdSockmsg { type_: XsdSockmsgType::Read as u32, req_id: 0xbad, tx_id: 0, len: 5000 };
    c.check("send malformed header", xb.send_raw(zerocopy::IntoBytes::as_bytes(&hdr)), Ok(()));
    let err = xb.transport_mut().wait_ring_error();
    c.check("ring error", err, Ok(xs_wire::ring_error::XENSTORE_ERROR_PROTO));
    c.check("reconnect", xb.transport_mut().reconnect(), Ok(()));
    xb.reset();
    c.check("name after reconnect", xb.read_string(none, "name"), name);

    println!("xstest: done, {} failed", c.failed);
    c.failed
}
