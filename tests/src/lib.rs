//! Shared helpers for the QEMU boot tests in `tests/tests/`: build the kernels once, boot a
//! machine with a deadline, and assert on its serial log, printing the whole log when an
//! assertion fails so a failure explains itself.

use std::path::Path;
use std::time::Duration;
use xtask::disk::{self, SECTOR};
pub use xtask::kernels::Kernels;
pub use xtask::qemu::{Machine, Module, Outcome, Run};

pub mod linux_domu;

/// Deadline for one boot. A full boot takes well under a second under TCG; the margin
/// covers a loaded CI machine.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The kernels, built once per test binary.
pub fn kernels() -> Kernels {
    xtask::kernels::build().unwrap_or_else(|e| panic!("building the kernels failed: {e}"))
}

/// Boots `m` and returns its run.
pub fn boot(m: &Machine) -> Run {
    m.run(DEADLINE).unwrap_or_else(|e| panic!("cannot run QEMU: {e}"))
}

/// Boots the test guest with `scenario` (its command line: the name, then options) as domain 1
/// beside dom0 and checks that it passed: the machine powered off, the guest printed
/// `TEST <name> PASS`, no domain crashed. The run, for the scenario's own checks.
pub fn scenario_passes(scenario: &str) -> Run {
    let run = boot(&Machine::scenario(&kernels(), scenario));
    let name = scenario.split_whitespace().next().unwrap_or(scenario);
    run.expect_outcome(Outcome::Poweroff).expect_line(&format!("TEST {name} PASS")).expect_no_line("crashed");
    run
}

/// The number domain `d` printed as the `key=<n>` field of its `<scenario>: ` line (the test
/// guest's `key=value` results); panics with the log when there is none.
pub fn guest_value(run: &Run, d: u16, scenario: &str, key: &str) -> i64 {
    let prefix = format!("(d{d}) {scenario}: ");
    let line = run
        .log
        .iter()
        .filter_map(|l| xtask::kv::after(l, &prefix))
        .find(|l| xtask::kv::get(l, key).is_some())
        .unwrap_or_else(|| fail(run, &format!("no {prefix:?} line has {key}=")));
    field_i64(run, line, key)
}

/// The number in the `key=<n>` field of `line` (a `key=value` line of dom0's, a guest's or the
/// hypervisor's, read by [`xtask::kv`]); panics with the log when there is none.
pub fn field(run: &Run, line: &str, key: &str) -> u64 {
    number(run, line, key)
}

/// [`field`] for a figure that may be negative.
pub fn field_i64(run: &Run, line: &str, key: &str) -> i64 {
    number(run, line, key)
}

fn number<T: std::str::FromStr>(run: &Run, line: &str, key: &str) -> T {
    xtask::kv::num(line, key).unwrap_or_else(|| fail(run, &format!("no numeric {key}= in {line:?}")))
}

/// The first line of the log that contains `needle`; panics with the log when there is none.
pub fn line<'a>(run: &'a Run, needle: &str) -> &'a str {
    run.log
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| fail(run, &format!("no line contains {needle:?}")))
}

/// The hypervisor's `Domain <d> destroyed: released=<frames> referenced=<frames>` line (frames
/// freed at once, frames others still hold); panics with the log when there is none.
pub fn destroyed_line(run: &Run, d: u16) -> &str {
    line(run, &format!("Domain {d} destroyed: "))
}

/// Assertions on a finished run.
/// `scenario` reported its checks as `RESULT <scenario> <check>=<value>` lines and passed: the
/// guest compares each value with Xen 4.17's and fails the scenario on a mismatch, naming both.
pub fn all_results_ok(run: &Run, scenario: &str) {
    let obs = xtask::conformance::observations(xtask::qemu::System::Microvisor, &run.log, scenario, "-");
    // Two of the observations are the runner's own (`verdict`, `end`).
    assert!(obs.checks.len() > 2, "no RESULT lines for {scenario}:\n{}", run.text());
    run.expect_line(&format!("TEST {scenario} PASS"));
}

pub trait RunExt {
    /// Panics with the log unless the run ended with `outcome`.
    fn expect_outcome(&self, outcome: Outcome) -> &Self;
    /// Panics with the log unless some line contains `needle`.
    fn expect_line(&self, needle: &str) -> &Self;
    /// Panics with the log if some line contains `needle`.
    fn expect_no_line(&self, needle: &str) -> &Self;
    /// Panics with the log unless the first line containing `a` comes before the first with `b`.
    fn expect_order(&self, a: &str, b: &str) -> &Self;
    /// [`expect_order`](Self::expect_order) for each consecutive pair of `steps`: each is a
    /// step further, so the first missing one says where the guest stopped.
    fn expect_in_order(&self, steps: &[&str]) -> &Self {
        for w in steps.windows(2) {
            self.expect_order(w[0], w[1]);
        }
        self
    }
}

impl RunExt for Run {
    fn expect_outcome(&self, outcome: Outcome) -> &Self {
        if self.outcome != outcome {
            fail(self, &format!("expected {outcome:?}, got {:?}", self.outcome));
        }
        self
    }
    fn expect_line(&self, needle: &str) -> &Self {
        if !self.has(needle) {
            fail(self, &format!("no line contains {needle:?}"));
        }
        self
    }
    fn expect_no_line(&self, needle: &str) -> &Self {
        if self.has(needle) {
            fail(self, &format!("a line contains {needle:?}"));
        }
        self
    }
    fn expect_order(&self, a: &str, b: &str) -> &Self {
        match (self.find(a), self.find(b)) {
            (Some(i), Some(j)) if i < j => {}
            _ => fail(self, &format!("expected {a:?} before {b:?}")),
        }
        self
    }
}

pub(crate) fn fail(run: &Run, why: &str) -> ! {
    panic!(
        "{why}\n---- serial log ({:?}, {:.2?}) ----\n{}\n---- qemu stderr ----\n{}",
        run.outcome,
        run.elapsed,
        run.text(),
        run.stderr
    );
}

/// A second test guest, `tg2`, writing the `blk-pattern` with `seed` over its disk (check it
/// on the host with [`check_pattern`]); `extra` adds options (`after=1 announce-done` to
/// start it with a hostile first domain and let that one know when it is done).
pub fn pattern_neighbour(k: &Kernels, seed: u64, extra: &str) -> Module {
    Module::new(&k.testguest, &format!("name=tg2 mem=32M -- scenario=blk-pattern seed={seed} {extra}"))
}

/// The 512-byte sector `sector` of a disk image as little-endian words.
pub fn read_words(img: &[u8], sector: u64) -> impl Iterator<Item = u64> + '_ {
    let at = (sector * SECTOR) as usize;
    img[at..at + SECTOR as usize].chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap()))
}

/// Checks on the host that every chunk the `blk-pattern` guest says it wrote holds the pattern
/// in `img`; returns the image and the chunks' first sectors.
pub fn check_pattern(run: &Run, img: &Path, seed: u64) -> (Vec<u8>, Vec<u64>) {
    let chunks: Vec<u64> = run
        .lines_with("blk-pattern: seed")
        .flat_map(|l| {
            let list = &l[l.find("chunks ").expect("chunk list") + 7..];
            list.split_whitespace().map(|s| s.parse::<u64>().unwrap()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(chunks.len(), 64, "chunk list:\n{}", run.text());
    let data = std::fs::read(img).unwrap();
    for &c in &chunks {
        for s in c..c + 512 {
            for (i, w) in read_words(&data, s).enumerate() {
                assert_eq!(w, disk::pattern_word(seed, s, i as u64), "sector {s} word {i} in the image");
            }
        }
    }
    (data, chunks)
}

/// The number in the first `key=<n>` field of the log (a structured figure a guest or dom0
/// printed).
pub fn kv(run: &Run, key: &str) -> Option<u64> {
    run.log.iter().find_map(|l| xtask::kv::num(l, key))
}
