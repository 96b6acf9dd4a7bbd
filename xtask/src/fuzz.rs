//! Hypercall-fuzzing campaigns (`cargo xtask fuzz` and the CI test): the machine — the
//! hypervisor with its frame-table audit on, dom0 serving a disk, the fuzzer domain running
//! the test guest's `fuzz` scenario from a seed, and a neighbour domain doing verified disk
//! I/O throughout — and the host's verdict: no hypervisor fault, a clean audit, the fuzzer
//! alive and satisfied with every answer it could check, and the neighbour's data intact, in
//! its own reads and in the image file. A failed campaign is replayed from its seed with
//! every call logged from the last progress mark, so the report ends with the calls that led
//! to the failure.

use crate::disk::{self, SECTOR};
use crate::kernels::Kernels;
use crate::qemu::{Machine, Module, Outcome, Run};
use crate::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Operations between the fuzzer's progress lines (and so the most a replay logs).
pub const PROGRESS: u64 = 1000;
/// What the fuzzer prints at each progress mark, and before each call in a replay.
const PROGRESS_LINE: &str = "fuzz: progress calls=";
const CALL_LINE: &str = "fuzz: #";
/// A campaign that prints neither for this long has stalled (a progress mark comes every
/// [`PROGRESS`] operations: well under a second, tens with the audit after every call).
const STALL_QUIET: Duration = Duration::from_secs(120);
/// Audit the frame table after every this many hypercalls, by default.
pub const DEFAULT_AUDIT: u64 = 500;
/// Chunk size and count of the neighbour's pattern (the test guest's `fuzz-disk`).
const CHUNK_SECTORS: u64 = 16;
const CHUNKS: usize = 16;
/// Domain ids in boot order.
const FUZZER: u16 = 1;
const NEIGHBOUR: u16 = 2;

/// One campaign.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub seed: u64,
    pub calls: u64,
    /// Audit every this many hypercalls.
    pub audit: u64,
    /// Log every call from this operation on (a replay).
    pub log_from: Option<u64>,
    /// Operations to leave out (`<a>-<b>,<c>,...`), to narrow a failure down by hand.
    pub skip: Option<String>,
}

impl Campaign {
    /// The command that runs this campaign again.
    pub fn command_line(&self) -> String {
        let mut c =
            format!("cargo xtask fuzz --seed {} --calls {} --audit {}", self.seed, self.calls, self.audit);
        if let Some(s) = &self.skip {
            c += &format!(" --skip {s}");
        }
        c
    }

    pub fn new(seed: u64, calls: u64) -> Campaign {
        Campaign { seed, calls, audit: DEFAULT_AUDIT, log_from: None, skip: None }
    }

    /// How long the machine may run: boot and set-up, then a generous rate per call (an
    /// operation costs tens of microseconds under TCG; audits and a loaded host cost more).
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(90 + self.calls / 200)
    }

    /// The machine for this campaign, with `image` as the neighbour's disk.
    pub fn machine(&self, k: &Kernels, image: &Path) -> Machine {
        let mut m = Machine::standard(k);
        m.hv_cmdline = format!("audit={}", self.audit);
        if self.log_from.is_some() {
            // A replay prints every call: more than a domU's console allowance, and a
            // dropped line would hide the call that did it.
            m.hv_cmdline += " guest_loglvl=all";
        }
        m.memory_mib = 256;
        let mut log = self.log_from.map(|n| format!(" log-from={n}")).unwrap_or_default();
        if let Some(s) = &self.skip {
            log += &format!(" skip={s}");
        }
        m.modules = vec![
            Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0"),
            Module::new(
                &k.testguest,
                &format!(
                    "name=fuzz mem=32M -- scenario=fuzz seed={} calls={} progress={PROGRESS} peer={NEIGHBOUR}{log}",
                    self.seed, self.calls
                ),
            ),
            Module::new(
                &k.testguest,
                &format!("name=fuzzdisk mem=32M -- scenario=fuzz-disk peer={FUZZER} seed={}", self.seed ^ 0x5eed),
            ),
        ];
        m.with_vbd(image, "fuzzdisk")
    }
}

/// What a clean campaign reports.
#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    pub calls: u64,
    pub hypercalls: u64,
    /// The fuzzer's own time for the campaign.
    pub fuzz_ms: u64,
    /// Audits passed and hypercalls counted by the hypervisor (all domains).
    pub audits: u64,
    pub hv_hypercalls: u64,
    pub disk_rounds: u64,
    /// Calls the fuzzer says it issued directly, and the fuzzer domain's calls as the
    /// hypervisor counted them ([`check_tallies`]).
    pub issued: u64,
    pub hv_fuzzer_calls: u64,
    /// The fuzzer's calls by hypercall (`fuzz: calls` keys).
    pub issued_by: BTreeMap<String, u64>,
    /// The fuzzer's `TEST fuzz PASS` line.
    pub summary: String,
}

/// `key=value` pairs with numeric values from the lines of `run` that contain `marker`,
/// summed by key (the tallies span several lines).
pub fn tally(log: &[String], marker: &str) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for l in log.iter().filter(|l| l.contains(marker)) {
        for (k, v) in crate::kv::pairs(crate::kv::after(l, marker).unwrap_or_default()) {
            if let Ok(v) = v.parse::<u64>() {
                *t.entry(k.to_string()).or_insert(0) += v;
            }
        }
    }
    t
}

/// The host's check that the fuzzer really issued the calls it claims: for every hypercall,
/// the hypervisor's tally of the fuzzer domain's completed calls (`audit: d1 calls ...`)
/// is at least what the fuzzer says it issued directly (`fuzz: calls ...`). The hypervisor
/// counts more: the guest runtime's own calls, the state the fuzzer restores after each
/// operation, and the `syscall`s in generated code, which the fuzzer cannot count. Returns
/// (issued, counted by the hypervisor).
pub fn check_tallies(log: &[String]) -> std::result::Result<(u64, u64), String> {
    let issued = tally(log, &format!("(d{FUZZER}) fuzz: calls"));
    let counted = tally(log, &format!("audit: d{FUZZER} calls"));
    let (Some(&claimed), Some(&total)) = (issued.get("total"), counted.get("total")) else {
        return Err("no call tallies from the fuzzer or the hypervisor".into());
    };
    for (k, &n) in issued.iter().filter(|(k, _)| !matches!(k.as_str(), "total" | "fast")) {
        let hv = counted.get(k).copied().unwrap_or(0);
        if hv < n {
            return Err(format!("the fuzzer claims {n} {k} calls, the hypervisor counted {hv}"));
        }
    }
    let sum: u64 =
        issued.iter().filter(|(k, _)| !matches!(k.as_str(), "total" | "fast")).map(|(_, n)| n).sum();
    if sum != claimed || total < claimed {
        return Err(format!(
            "the tallies do not add up: fuzzer total={claimed} (sum {sum}), hypervisor total={total}"
        ));
    }
    Ok((claimed, total))
}

/// Why a campaign failed, with the calls that led there when a replay could show them.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    /// The command that reproduces it.
    pub repro: String,
    pub why: String,
    pub last_calls: Vec<String>,
    pub log_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fuzz campaign with seed {} failed: {}", self.seed, self.why)?;
        writeln!(f, "reproduce with: {}", self.repro)?;
        if !self.log_tail.is_empty() {
            writeln!(f, "---- the end of the serial log ----")?;
            for l in &self.log_tail {
                writeln!(f, "{l}")?;
            }
        }
        if self.last_calls.is_empty() {
            writeln!(f, "(the replay did not show the calls)")?;
        } else {
            writeln!(f, "---- the last {} calls (from a replay of the seed) ----", self.last_calls.len())?;
            for l in &self.last_calls {
                writeln!(f, "{l}")?;
            }
        }
        Ok(())
    }
}

/// `key=<u64>` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    crate::kv::num(line, key)
}

/// The host's verdict on a finished campaign.
pub fn verdict(run: &Run, image: &Path) -> std::result::Result<Outcomes, String> {
    let line = |needle: &str| run.lines_with(needle).next().cloned();
    if let Some(l) = line("AUDIT FAILED") {
        return Err(format!("the frame-table audit failed: {l}"));
    }
    if let Some(l) = line("FATAL") {
        return Err(format!("hypervisor fault: {l}"));
    }
    if let Some(l) = line("PANIC") {
        return Err(format!("a guest panicked: {l}"));
    }
    if let Some(l) = line("crashed: ") {
        return Err(format!("a domain was crashed: {l}"));
    }
    if let Some(l) = line(crate::qemu::STALL_LINE) {
        let mark = run.lines_with(PROGRESS_LINE).filter_map(|l| field(l, "calls")).last().unwrap_or(0);
        return Err(format!("stall: the campaign made no progress after operation {mark} ({l})"));
    }
    if run.outcome != Outcome::Poweroff {
        return Err(format!("the machine ended with {:?}", run.outcome));
    }
    if let Some(l) = line("TEST fuzz FAIL").or_else(|| line("TEST fuzz-disk FAIL")) {
        return Err(l);
    }
    let pass = line("TEST fuzz PASS").ok_or("no TEST fuzz PASS line")?;
    let disk = line("TEST fuzz-disk PASS").ok_or("no TEST fuzz-disk PASS line")?;
    let audit = line("audit: clean passed=").ok_or("no audit summary from the hypervisor")?;
    // The neighbour's first round ended before the campaign started (the hand-shake) and
    // each round checks whether the fuzzer is done: a second round means its disk was busy
    // from the campaign's start to its end.
    let rounds = field(&disk, "rounds").unwrap_or(0);
    if rounds < 2 || !run.has(&format!("d{FUZZER} done")) {
        return Err(format!("the neighbour's disk was not busy throughout the campaign: {disk}"));
    }
    check_image(run, image)?;
    let (issued, hv_fuzzer_calls) = check_tallies(&run.log)?;
    Ok(Outcomes {
        calls: field(&pass, "calls").unwrap_or(0),
        hypercalls: field(&pass, "hypercalls").unwrap_or(0),
        fuzz_ms: field(&pass, "ms").unwrap_or(0),
        audits: field(&audit, "passed").unwrap_or(0),
        hv_hypercalls: field(&audit, "hypercalls").unwrap_or(0),
        disk_rounds: rounds,
        issued,
        hv_fuzzer_calls,
        issued_by: tally(&run.log, &format!("(d{FUZZER}) fuzz: calls")),
        summary: pass,
    })
}

/// The neighbour's last round is in the image file, where it said it wrote it.
pub fn check_image(run: &Run, image: &Path) -> std::result::Result<(), String> {
    let chunks: Vec<u64> = run
        .lines_with("fuzz-disk: chunks ")
        .next()
        .map(|l| {
            l[l.find("chunks ").unwrap() + 7..].split_whitespace().filter_map(|s| s.parse().ok()).collect()
        })
        .unwrap_or_default();
    if chunks.len() != CHUNKS {
        return Err(format!("the neighbour listed {} chunks, not {CHUNKS}", chunks.len()));
    }
    let seed = run
        .lines_with("fuzz-disk: last seed ")
        .next()
        .and_then(|l| l.split("last seed ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or("no last seed from the neighbour")?;
    let data = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    for &c in &chunks {
        for s in c..c + CHUNK_SECTORS {
            let at = (s * SECTOR) as usize;
            let Some(sector) = data.get(at..at + SECTOR as usize) else {
                return Err(format!("sector {s} is past the end of the image"));
            };
            for (i, w) in sector.chunks_exact(8).enumerate() {
                let got = u64::from_le_bytes(w.try_into().unwrap());
                if got != disk::pattern_word(seed, s, i as u64) {
                    return Err(format!("the neighbour's data in the image is wrong at sector {s} word {i}"));
                }
            }
        }
    }
    Ok(())
}

/// The calls a replay logged, the last `n` before the log ends.
fn last_calls(run: &Run, n: usize) -> Vec<String> {
    let calls: Vec<&String> = run.log.iter().filter(|l| l.contains("fuzz: #")).collect();
    calls[calls.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
}

/// Runs a campaign; on failure, replays it with every call logged from the last progress
/// mark before the failure.
pub fn run_campaign(k: &Kernels, c: &Campaign) -> std::result::Result<(Outcomes, Run), Failure> {
    let image = disk::scratch_image("fuzz", 64 << 20).map_err(|e| Failure {
        seed: c.seed,
        repro: c.command_line(),
        why: e,
        last_calls: Vec::new(),
        log_tail: Vec::new(),
    })?;
    let run =
        c.machine(k, &image).run_watched(c.deadline(), Some((PROGRESS_LINE, STALL_QUIET))).map_err(|e| {
            Failure {
                seed: c.seed,
                repro: c.command_line(),
                why: e,
                last_calls: Vec::new(),
                log_tail: Vec::new(),
            }
        })?;
    keep_log(&run);
    match verdict(&run, &image) {
        Ok(o) => Ok((o, run)),
        Err(why) => {
            let tail: Vec<String> = run.log[run.log.len().saturating_sub(40)..].to_vec();
            // The guest's own report of its last calls, when it could make one.
            let mut last: Vec<String> = run.lines_with("fuzz:   #").cloned().collect();
            if last.is_empty() {
                let mark = run.lines_with("fuzz: progress calls=").filter_map(|l| field(l, "calls")).last();
                let replay = Campaign { log_from: Some(mark.unwrap_or(0)), ..c.clone() };
                let img = disk::scratch_image("fuzz-replay", 64 << 20).ok();
                if let Some(img) = img {
                    if let Ok(r) =
                        replay.machine(k, &img).run_watched(c.deadline(), Some((CALL_LINE, STALL_QUIET)))
                    {
                        last = last_calls(&r, 40);
                        let dir = crate::workspace_root().join("target/fuzz");
                        let _ = std::fs::write(dir.join("replay.log"), r.text());
                    }
                }
            }
            Err(Failure { seed: c.seed, repro: c.command_line(), why, last_calls: last, log_tail: tail })
        }
    }
}

/// A seed from the clock and the process id, for campaigns not given one.
pub fn random_seed() -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let x = (t as u64) ^ (u64::from(std::process::id()) << 32);
    // One splitmix64 round so neighbouring clocks give unrelated seeds.
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `cargo xtask fuzz [--seed N] [--calls M] [--audit N] [--log-from N]`.
pub fn command(k: &Kernels, args: &[String]) -> Result<bool> {
    let mut seed = None;
    let mut calls = 100_000u64;
    let mut audit = DEFAULT_AUDIT;
    let mut log_from = None;
    let mut skip = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("fuzz: `{a}` needs a value"));
        let mut num = || -> Result<u64> {
            let v = value()?;
            v.replace('_', "").parse().map_err(|_| format!("fuzz: `{a} {v}`: not a number"))
        };
        match a.as_str() {
            "--seed" => seed = Some(num()?),
            "--calls" => calls = num()?.max(1),
            "--audit" => audit = num()?.clamp(1, 1 << 32),
            "--log-from" => log_from = Some(num()?),
            "--skip" => {
                let v = value()?;
                if !v.split(',').all(|r| r.split('-').all(|n| n.parse::<u64>().is_ok())) {
                    return Err(format!("fuzz: `--skip {v}`: want <a>-<b>,<c>,... (operation numbers)"));
                }
                skip = Some(v.clone());
            }
            other => return Err(format!("fuzz: unknown option `{other}`")),
        }
    }
    let seed = seed.unwrap_or_else(random_seed);
    let c = Campaign { seed, calls, audit, log_from, skip };
    println!(
        "fuzz: seed {seed}, {calls} calls, audit every {audit} hypercalls (reproduce: {})",
        c.command_line()
    );
    let t0 = std::time::Instant::now();
    match run_campaign(k, &c) {
        Ok((o, _)) => {
            let secs = t0.elapsed().as_secs_f64();
            println!("{}", o.summary);
            // The fuzzer's own clock times the campaign (boot and set-up aside).
            let per_sec = |n: u64| n as f64 * 1000.0 / o.fuzz_ms.max(1) as f64;
            println!(
                "fuzz: PASS seed={seed} calls={} hypercalls={} issued={} hv_fuzzer_calls={} campaign_ms={} calls_per_sec={:.0} hv_calls_per_sec={:.0} machine_secs={secs:.1} audits={} hv_hypercalls={} disk_rounds={}",
                o.calls,
                o.hypercalls,
                o.issued,
                o.hv_fuzzer_calls,
                o.fuzz_ms,
                per_sec(o.calls),
                per_sec(o.hv_fuzzer_calls),
                o.audits,
                o.hv_hypercalls,
                o.disk_rounds
            );
            Ok(true)
        }
        Err(f) => {
            eprint!("{f}");
            Ok(false)
        }
    }
}

/// Writes a run's serial log to `target/fuzz/last.log` for a closer look.
fn keep_log(run: &Run) {
    let dir = crate::workspace_root().join("target/fuzz");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("last.log"), run.text());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_seeds() {
        let l = "(d1) TEST fuzz PASS calls=100 hypercalls=250 ms=30 seed=7";
        assert_eq!(field(l, "calls"), Some(100));
        assert_eq!(field(l, "hypercalls"), Some(250));
        assert_eq!(field(l, "seed"), Some(7));
        assert_eq!(field(l, "nope"), None);
        assert!(Campaign::new(1, 1_000_000).deadline() > Campaign::new(1, 1000).deadline());
    }

    fn log(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tallies_back_the_fuzzers_claims() {
        let good = log(&[
            "(d1) fuzz: calls total=5 fast=2",
            "(d1) fuzz: calls mmu_update=3 other=1",
            "(d1) fuzz: calls sched_op=1",
            "(XEN) audit: d1 calls total=9",
            "(XEN) audit: d1 calls mmu_update=4 other=1 sched_op=1",
            "(XEN) audit: d1 calls set_segment_base=3",
            "(XEN) audit: d2 calls total=100",
        ]);
        assert_eq!(check_tallies(&good), Ok((5, 9)));
        // A claim the hypervisor did not see.
        let mut lying = good.clone();
        lying[2] = "(d1) fuzz: calls sched_op=2".into();
        lying[0] = "(d1) fuzz: calls total=6 fast=2".into();
        assert!(check_tallies(&lying).unwrap_err().contains("2 sched_op"));
        // A total that is not the sum of its parts.
        let mut bad_sum = good.clone();
        bad_sum[0] = "(d1) fuzz: calls total=50".into();
        assert!(check_tallies(&bad_sum).is_err());
        // No tally at all (the audit off, or a guest that printed nothing).
        assert!(check_tallies(&good[3..]).is_err());
    }
}
