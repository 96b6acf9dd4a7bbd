//! The hypercall fuzzer's campaigns and the run-time frame-table audit they rely on.

use tests::{boot, kernels, Machine, Outcome, RunExt};

/// The demo machine (dom0 serving the domU's disk, console and rng) with the frame table
/// audited after every hypercall: a normal boot holds every invariant the audit checks, so
/// the audit has no false alarms to hide a fuzzer's finding behind.
#[test]
fn audit_after_every_hypercall_is_clean_through_a_demo_boot() {
    let k = kernels();
    let img = xtask::disk::scratch_image("audit", 64 << 20).unwrap();
    let mut m = Machine::standard(&k).with_vbd(&img, "domU");
    m.hv_cmdline = "audit=1".into();
    // Each audit walks every frame: less RAM, quicker audits.
    m.memory_mib = 192;
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("audit: the frame table is checked every 1 hypercalls")
        .expect_line("audit: clean passed=")
        .expect_line("wrote, flushed and read back sector")
        .expect_no_line("AUDIT FAILED");
    let line = run.lines_with("audit: clean passed=").next().unwrap();
    // One audit after each hypercall and one when the machine stopped.
    let (passed, calls) = (field(line, "passed"), field(line, "hypercalls"));
    assert!(calls > 100 && passed == calls + 1, "{line}");
}

/// `key=<u64>` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let at = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key}= in {line}"));
    let v = &line[at + key.len() + 1..];
    v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad {key}= in {line}"))
}
