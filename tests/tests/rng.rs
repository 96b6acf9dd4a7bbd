//! The random-number split device end to end: dom0 serves QEMU's virtio-rng to the domUs
//! through its `vrng` backend; a domU reads through the frontend; a hostile frontend gets
//! its errors and the backend keeps serving.

use tests::{boot, field, field_i64, guest_value, kernels, Machine, Module, Outcome, Run, RunExt};

#[test]
fn a_domu_reads_64_kib_from_dom0s_virtio_rng() {
    let run = boot(&Machine::scenario(&kernels(), "rng-read"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: virtio-rng 00:")
        .expect_line("TEST rng-read PASS")
        .expect_no_line(" FAIL ");
    // Every byte value turned up in the first 64 KiB.
    assert_eq!(guest_value(&run, 1, "rng-read", "distinct"), 256);
    // dom0 says where the bytes came from, and served exactly the bytes the guest read.
    let line = disconnect_line(&run, 1);
    assert!(line.contains("(virtio-rng 00:"), "{line}");
    let read = guest_value(&run, 1, "rng-read", "bytes");
    assert_eq!(field_i64(&run, line, "bytes"), read, "{line}");
    assert_eq!((field(&run, line, "errors"), field(&run, line, "ring_unmapped")), (0, 1), "{line}");
}

#[test]
fn a_hostile_frontend_gets_errors_and_the_backend_keeps_serving() {
    let k = kernels();
    let mut m = Machine::scenario(&k, "rng-hostile");
    // A well-behaved neighbour served by the same device at the same time.
    m.modules.push(Module::new(&k.testguest, "name=tg2 mem=32M -- scenario=rng-read"));
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST rng-hostile PASS")
        .expect_line("TEST rng-read PASS")
        .expect_line("dom0: d1/vrng0: frontend broke the ring")
        .expect_no_line(" FAIL ");
    // dom0 counted an error for each request the hostile guest had refused, and tore both
    // connections down cleanly; the neighbour got every byte it read and no error.
    let hostile = disconnect_line(&run, 1);
    let refused = guest_value(&run, 1, "rng-hostile", "refused");
    assert_eq!(field_i64(&run, hostile, "errors"), refused, "{hostile}");
    assert_eq!(field(&run, hostile, "ring_unmapped"), 1, "{hostile}");
    let neighbour = disconnect_line(&run, 2);
    let read = guest_value(&run, 2, "rng-read", "bytes");
    assert_eq!(field_i64(&run, neighbour, "bytes"), read, "{neighbour}");
    assert_eq!(
        (field(&run, neighbour, "errors"), field(&run, neighbour, "ring_unmapped")),
        (0, 1),
        "{neighbour}"
    );
}

/// dom0's line for domain `d`'s random-number device going away (its figures as `key=value`).
fn disconnect_line(run: &Run, d: u16) -> &str {
    let prefix = format!("dom0: d{d}/vrng0: disconnected (");
    run.log
        .iter()
        .find(|l| l.contains(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", run.text()))
}

#[test]
fn the_demo_domu_prints_random_bytes_from_dom0() {
    let m = Machine::standard(&kernels()).dom0_options("steps=0");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff);
    let line = run
        .lines_with("domU: 32 random bytes from dom0's virtio-rng: ")
        .next()
        .unwrap_or_else(|| panic!("no rng line:\n{}", run.text()));
    let hex = line.rsplit(' ').next().unwrap();
    assert_eq!(hex.len(), 64, "{line}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert!(!hex.bytes().all(|b| b == b'0'), "{line}");
}

#[test]
fn vrng_none_serves_nobody() {
    let m = Machine::scenario(&kernels(), "rng-read").dom0_options("vrng=none");
    let mut m = m;
    // The guest waits a minute for a device; do not make the test wait that long.
    m.modules[1].args = m.modules[1].args.replace("scenario=rng-read", "scenario=none");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff).expect_no_line("vrng0").expect_no_line("serving random numbers");
}
