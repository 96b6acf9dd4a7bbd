//! xenstored in dom0, seen from a domU: the demo domU's `xstest` self-test runs every check
//! through its xenstore ring and prints one line per check; each expected result is asserted
//! here, and no check may fail.

use tests::{boot, kernels, Machine, Module, Outcome, Run, RunExt};

fn xstest_run() -> Run {
    let k = kernels();
    let mut m = Machine::standard(&k);
    m.modules[0] = Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0");
    m.modules[1] = Module::new(&k.domu, "name=domU mem=32M -- xstest steps=1 work=1000");
    boot(&m)
}

/// Asserts the line `xstest: <check>: <result> ok`.
fn ok(run: &Run, check: &str, result: &str) {
    run.expect_line(&format!("xstest: {check}: {result} ok"));
}

#[test]
fn domu_reads_its_nodes_and_writes_only_its_own() {
    let run = xstest_run();
    run.expect_outcome(Outcome::Poweroff).expect_line("xstest: done, 0 failed").expect_no_line(" FAIL ");
    // The name dom0 gave it is the one the console backend tags its lines with.
    let name_line = run.lines_with("xstest: name = ").next().expect("name printed").clone();
    let name = name_line.split("xstest: name = ").nth(1).unwrap().to_string();
    run.expect_line(&format!("(d0) [{name}] xstest: name = {name}"));
    run.expect_line("xstest: domid = 1");
    ok(&run, "domain path", "\"/local/domain/1\"");
    ok(&run, "absolute name", &format!("{name:?}"));
    ok(&run, "write data/hello", "()");
    ok(&run, "read data/hello", "\"world\"");
    ok(&run, "mkdir data/dir", "()");
    ok(&run, "directory data", "[\"dir\", \"hello\"]");
    ok(&run, "rm data/dir", "()");
    ok(&run, "get_perms data", "[\"n1\"]");
    ok(&run, "set_perms data/hello", "()");
    ok(&run, "write outside own subtree", "EACCES");
    ok(&run, "rewrite own name", "EACCES");
    ok(&run, "set_perms on name", "EACCES");
    ok(&run, "read backend state", "()");
    ok(&run, "write backend state", "EACCES");
    ok(&run, "rewrite backend path", "EACCES");
}

#[test]
fn oversized_and_malformed_requests_get_errors() {
    let run = xstest_run();
    run.expect_outcome(Outcome::Poweroff).expect_no_line(" FAIL ");
    ok(&run, "oversized path", "EINVAL");
    ok(&run, "oversized value", "ENOSPC");
    ok(&run, "value over the payload limit", "E2BIG");
    ok(&run, "unknown request type", "ENOSYS");
    ok(&run, "privileged request", "EACCES");
    // A header announcing 5000 bytes: dom0 stops reading the ring and sets error 3
    // (XENSTORE_ERROR_PROTO); the domU reconnects and is served again.
    ok(&run, "send malformed header", "()");
    run.expect_line("dom0: d1: xenstore protocol error 3, ring ignored");
    ok(&run, "ring error", "3");
    ok(&run, "reconnect", "()");
    run.expect_line("xstest: name after reconnect: ");
}

#[test]
fn watches_fire_and_transactions_conflict() {
    let run = xstest_run();
    run.expect_outcome(Outcome::Poweroff).expect_no_line(" FAIL ");
    ok(&run, "watch data/pong", "()");
    ok(&run, "watch fires at once", "(\"data/pong\", \"pong\")");
    ok(&run, "write data/ping", "()");
    // dom0's echo service wrote data/pong: the domU's watch fired.
    ok(&run, "watch fired by dom0", "(\"data/pong\", \"pong\")");
    ok(&run, "read data/pong", "\"hello-watch\"");
    ok(&run, "conflicting commit", "EAGAIN");
    ok(&run, "transaction helper", "()");
    ok(&run, "counter", "\"6\"");
    run.expect_order("xstest: done, 0 failed", "dom0: d1 released and destroyed");
}

#[test]
fn rings_work_foreign_mapped_too() {
    // Without the reserved grants, dom0 maps the rings as Xen's classic xenstored does:
    // mmu_update with the domU as foreigndom. Everything works the same, and the mappings
    // are gone before the domain is destroyed.
    let k = kernels();
    let mut m = Machine::standard(&k);
    m.modules[0] = Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0 ringmap=foreign");
    m.modules[1] = Module::new(&k.domu, "name=domU mem=32M -- xstest steps=1 work=1000");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line(
            "introduced: xenstore served (foreign-mapped ring), console served (foreign-mapped ring)",
        )
        .expect_line("xstest: done, 0 failed")
        .expect_no_line(" FAIL ");
    nothing_left_referenced(&run);
}

/// The domU's frames were all free when it was destroyed: dom0 had unmapped its rings.
fn nothing_left_referenced(run: &Run) {
    let line = tests::destroyed_line(run, 1);
    assert_eq!(tests::field(run, line, "referenced"), 0, "{line}");
}

#[test]
fn rings_are_granted_by_default() {
    let run = xstest_run();
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("introduced: xenstore served (granted ring), console served (granted ring)");
    nothing_left_referenced(&run);
}

/// A domU that fills the store (transactions, watches, nodes under long paths) until each is
/// refused and keeps asking is stopped by its memory quota; dom0 survives, and a neighbour
/// started at the same moment is served throughout: its console through dom0's backend, its
/// xenstore handshake, and its disk, whose bytes are checked in the image.
#[test]
fn a_domu_filling_the_store_is_refused_and_its_neighbour_keeps_console_and_disk() {
    let k = kernels();
    let img =
        xtask::disk::scratch_image("xs-fill", 64 << 20).unwrap_or_else(|e| panic!("scratch image: {e}"));
    let seed = 0x5107e_u64;
    let mut m = Machine::scenario(&k, "xs-fill until=2");
    m.modules.push(tests::pattern_neighbour(&k, seed, "after=1 announce-done console-ring"));
    let run = boot(&m.with_vbd(&img, "tg2"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST xs-fill PASS")
        .expect_no_line("PANIC")
        .expect_no_line(" FAIL ")
        // The neighbour's lines come through dom0's console backend.
        .expect_line("(d0) [tg2] TEST blk-pattern PASS")
        .expect_order("xs-fill: nodes=", "xs-fill: the neighbour is done")
        .expect_order("(d0) [tg2] TEST blk-pattern PASS", "xs-fill: the neighbour is done");
    // The fill was stopped by the memory quota, not by running dom0 out of memory.
    let line = run.lines_with("xs-fill: nodes=").next().unwrap().clone();
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_string()
    };
    assert_eq!(field("nodes_err"), "ENOMEM", "{line}");
    assert_eq!(field("tx_err"), "ENOMEM", "{line}");
    assert!(field("nodes").parse::<u32>().unwrap() > 100, "{line}");
    tests::check_pattern(&run, &img, seed);
}

/// With no heap to spare (`heap-reserve=` above dom0's whole heap), xenstored refuses every
/// domU request that would make it hold more, with `ENOMEM`, still answers the rest, the
/// backends put off creating devices, and dom0 lives on: the path a heap near exhaustion takes
/// instead of a failing allocation.
#[test]
fn with_the_heap_short_every_growing_request_is_refused() {
    let m = Machine::scenario(&kernels(), "xs-fill").dom0_options("heap-reserve=1048576");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: heap short: domUs' requests that would allocate are refused")
        .expect_line("xs-fill: nodes=0 nodes_err=ENOMEM watches=0 watches_err=ENOMEM txs=0 txs_err=ENOMEM")
        .expect_line("xs-fill: still served, name tg")
        .expect_line("TEST xs-fill PASS")
        .expect_no_line("PANIC")
        // The backends create no device (each would allocate) until the heap recovers.
        .expect_line("dom0: vrng backends: dom0's heap is short; new devices wait")
        .expect_no_line("d1/vrng0 (tg)");
}
