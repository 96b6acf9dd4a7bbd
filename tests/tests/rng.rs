//! The random-number split device end to end: dom0 serves QEMU's virtio-rng to the domUs
//! through its `vrng` backend; a domU reads through the frontend; a hostile frontend gets
//! its errors and the backend keeps serving.

use tests::{boot, kernels, Machine, Module, Outcome, RunExt};

#[test]
fn a_domu_reads_64_kib_from_dom0s_virtio_rng() {
    let run = boot(&Machine::scenario(&kernels(), "rng-read"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: virtio-rng 00:")
        .expect_line("TEST rng-read PASS 65536 bytes")
        .expect_line("256 distinct byte values")
        .expect_no_line(" FAIL ");
    // dom0 says where the bytes came from, and every byte the guest asked for is counted.
    let line = run
        .lines_with("dom0: d1/vrng0: disconnected (")
        .next()
        .unwrap_or_else(|| panic!("no disconnect line:\n{}", run.text()));
    assert!(line.contains(" 70534 bytes from virtio-rng 00:"), "{line}");
    assert!(line.contains(" 0 errors; ring unmapped: yes"), "{line}");
}

#[test]
fn a_hostile_frontend_gets_errors_and_the_backend_keeps_serving() {
    let k = kernels();
    let mut m = Machine::scenario(&k, "rng-hostile");
    // A well-behaved neighbour served by the same device at the same time.
    m.modules.push(Module::new(&k.testguest, "name=tg2 mem=32M -- scenario=rng-read"));
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST rng-hostile PASS 7 bad requests refused")
        .expect_line("TEST rng-read PASS")
        .expect_line("dom0: d1/vrng0: frontend broke the ring")
        .expect_no_line(" FAIL ");
    // The hostile connection counted its errors and was torn down cleanly, as was the
    // neighbour's.
    let hostile =
        run.lines_with("dom0: d1/vrng0: disconnected (").next().unwrap_or_else(|| panic!("{}", run.text()));
    assert!(hostile.contains(" 7 errors; ring unmapped: yes"), "{hostile}");
    run.expect_line("dom0: d2/vrng0: disconnected (");
    assert_eq!(run.lines_with("ring unmapped: yes").count(), 2, "{}", run.text());
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
