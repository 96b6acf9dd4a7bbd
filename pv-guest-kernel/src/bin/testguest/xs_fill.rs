//! `xs-fill`: a domU that makes dom0's xenstored hold as much as it can — nodes with long
//! paths and near-maximal values, watches with long paths and tokens, every transaction it may
//! open, each filled — until each is refused, then keeps asking. xenstored must refuse it
//! (`ENOMEM` from the per-domain memory quota, or a count quota) and keep serving everyone
//! else; the host test runs a neighbour whose console and disk must keep working.
//!
//! With `until=<domid>` it publishes `data/bench-done` before it starts (so a neighbour given
//! `after=` starts with it) and keeps up the pressure until that domain publishes its own.
//!
//! Results: `xs-fill: nodes=<n> nodes_err=<errno> watches=<n> watches_err=<errno>
//! txs=<n> txs_err=<errno> tx_writes=<n> tx_err=<errno>` and `TEST xs-fill PASS|FAIL`.

use super::{bench_order, report, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::Errno;
use pv_guest_kernel::xenbus::{self, TxId};
use pv_guest_kernel::{cmdline, println, time};

/// A node's value: just under the node-size quota (2048 bytes with the node's header).
const VALUE: usize = 1900;
/// Attempts of each kind at most (far beyond any quota).
const ATTEMPTS: u32 = 5000;
/// Requests made after everything was refused (the pressure the neighbour lives with), at
/// least.
const PRESSURE: u32 = 1000;
/// How long the pressure goes on at most waiting for the neighbour.
const UNTIL_NS: u64 = 120_000_000_000;

/// How far one kind of request got: how many were accepted and the error that stopped it.
fn fill(mut one: impl FnMut(u32) -> Result<(), Errno>) -> (u32, Option<Errno>) {
    for i in 0..ATTEMPTS {
        if let Err(e) = one(i) {
            return (i, Some(e));
        }
    }
    (ATTEMPTS, None)
}

fn name(e: Option<Errno>) -> &'static str {
    e.map_or("none", |e| e.name())
}

pub fn run(c: &Ctx) {
    let mut fails: Vec<String> = Vec::new();
    let mut xb = match xenbus::connect(c.si) {
        Ok(xb) => xb,
        Err(e) => return println!("TEST xs-fill FAIL no xenstore: {e}"),
    };
    let mut peer = None;
    if let Some(id) = cmdline::get(c.cmd, "until").and_then(cmdline::parse_u64) {
        match bench_order::Peer::watch(&mut xb, id) {
            Ok(p) => peer = Some(p),
            Err(e) => fails.push(format!("cannot watch d{id}: {e}")),
        }
        bench_order::announce_done(c.si);
    }
    let value = alloc::vec![b'v'; VALUE];
    // Long names: the path keys are the part xenstored once did not charge. A node's child
    // list counts against its size quota, so the long names sit in small directories.
    let long = "k".repeat(1800);
    let node = |i: u32| format!("data/{}/{}/{long}", i / 20, i % 20);
    // Transactions first, each filled until refused, then given up (their memory returns).
    let mut txs = Vec::new();
    let (_, txs_err) = fill(|_| xb.transaction_start().map(|t| txs.push(t)));
    let mut tx_writes = 0u32;
    let mut tx_err = None;
    for &tx in &txs {
        let (n, e) = fill(|i| xb.write(tx, &node(i), &value));
        tx_writes += n;
        tx_err = tx_err.or(e);
    }
    let opened = txs.len();
    for tx in txs {
        let _ = xb.transaction_end(tx, false);
    }
    // Each registration fires at once: the events are taken as they come, so the queue of
    // the client never overflows and the neighbour's event is not lost among them.
    let (watches, watches_err) = fill(|i| {
        let r = xb.watch(&format!("data/w{i:04}{long}"), &format!("{i}{}", "t".repeat(200)));
        if let Some(p) = peer.as_mut() {
            p.take_events(&mut xb);
        }
        r
    });
    let (nodes, nodes_err) = fill(|i| xb.write(TxId::NONE, &node(i), &value));
    println!(
        "xs-fill: nodes={nodes} nodes_err={} watches={watches} watches_err={} txs={opened} txs_err={} tx_writes={tx_writes} tx_err={}",
        name(nodes_err),
        name(watches_err),
        name(txs_err),
        name(tx_err)
    );
    // (No transaction opened, no write in one to refuse.)
    let tx_err = if opened == 0 { Some(Errno::ENOENT) } else { tx_err };
    for (what, e) in [
        ("nodes", nodes_err),
        ("watches", watches_err),
        ("transactions", txs_err),
        ("transaction writes", tx_err),
    ] {
        if e.is_none() {
            fails.push(format!("{what}: never refused"));
        }
    }
    // Keep at it: every one of these must be refused, none may hurt dom0.
    let mut accepted = 0;
    let deadline = time::now_ns().saturating_add(UNTIL_NS);
    let mut i = 0;
    loop {
        if xb.write(TxId::NONE, &node(ATTEMPTS + i), &value).is_ok() {
            accepted += 1;
        }
        i += 1;
        if i < PRESSURE {
            continue;
        }
        let Some(p) = peer.as_mut() else { break };
        if p.done(&mut xb) {
            println!("xs-fill: the neighbour is done after {i} more requests");
            break;
        }
        if time::now_ns() >= deadline {
            fails.push(String::from("the neighbour never finished"));
            break;
        }
    }
    if accepted > 0 {
        fails.push(format!("{accepted} writes accepted after the store refused"));
    }
    // Still served: its own nodes read back.
    match xb.read_string(TxId::NONE, "name") {
        Ok(n) => println!("xs-fill: still served, name {n}"),
        Err(e) => fails.push(format!("reading its name afterwards: {e}")),
    }
    report(
        "xs-fill",
        &fails,
        format_args!(
            "refused: nodes {}, watches {}, transactions {}",
            name(nodes_err),
            name(watches_err),
            name(txs_err)
        ),
    );
}
