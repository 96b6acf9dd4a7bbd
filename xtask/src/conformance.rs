//! Differential conformance: the test guest's standalone scenarios (no xenstore, no second
//! domain) run under microvisor as a domU and under Xen 4.17 as dom0 in the same QEMU, and
//! what each reported (`RESULT <scenario> <check>=<value>` lines, see
//! `hypercall_abi::microvisor::conformance`) is compared check by check.
//!
//! Agreement with Xen on the same QEMU is the bar. Where the two differ on purpose the
//! difference is listed in [`DELIBERATE`] with its reason (the guest is dom0 under Xen and a
//! domU under microvisor, a TCG quirk, a documented design choice); differences that are
//! bugs still to fix are listed in [`KNOWN_OPEN`] (docs/conformance-status.md explains
//! each). Anything else, and any listed entry that no longer differs, fails the comparison,
//! so both lists stay true.

use crate::debian::Unavailable;
use crate::kernels::Kernels;
use crate::qemu::{Machine, Outcome, Run, System};
use crate::xen::{self, Xen};
use hypercall_abi::microvisor::conformance as format;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// A scenario of the differential run: a label and the test guest's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub label: &'static str,
    pub cmdline: &'static str,
}

const fn scenario(label: &'static str, cmdline: &'static str) -> Scenario {
    Scenario { label, cmdline }
}

/// The standalone scenarios: each needs only the hypervisor. The last ones must end with
/// the hypervisor crashing the domain, which the synthetic `end` check compares.
pub const SCENARIOS: &[Scenario] = &[
    scenario("trap-pf", "scenario=trap-pf"),
    scenario("trap-ud", "scenario=trap-ud"),
    scenario("events", "scenario=events"),
    scenario("badargs", "scenario=badargs"),
    scenario("mm", "scenario=mm"),
    scenario("mm-hostile", "scenario=mm-hostile"),
    scenario("ipc-hostile", "scenario=ipc-hostile"),
    scenario("user-mode", "scenario=user-mode"),
    scenario("syscall-compat", "scenario=syscall-compat"),
    scenario("noncanonical-rip", "scenario=noncanonical-rip"),
    scenario("entry-flags", "scenario=entry-flags"),
    scenario("privop-hlt", "scenario=privop insn=hlt"),
    scenario("privop-wrmsr", "scenario=privop insn=wrmsr"),
    scenario("privop-in", "scenario=privop insn=in"),
    scenario("hypercall-regs", "scenario=hypercall-regs"),
    scenario("softint", "scenario=softint"),
    scenario("privop-emul", "scenario=privop-emul"),
    scenario("debugreg", "scenario=debugreg"),
    scenario("iopl", "scenario=iopl"),
    scenario("segbase", "scenario=segbase"),
    scenario("iret-to-self", "scenario=iret-to-self"),
    scenario("ptwr", "scenario=ptwr"),
    scenario("vcpu-ops", "scenario=vcpu-ops"),
    scenario("evtchn-ops", "scenario=evtchn-ops"),
    scenario("gnttab-ops", "scenario=gnttab-ops"),
    scenario("memop", "scenario=memop"),
    scenario("unmapped", "scenario=unmapped"),
    scenario("hvspace", "scenario=hvspace"),
    scenario("stack-overflow", "scenario=stack-overflow"),
];

/// Finds a scenario by label.
pub fn find(label: &str) -> Option<Scenario> {
    SCENARIOS.iter().copied().find(|s| s.label == label)
}

/// A listed difference: which checks of which scenario, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub scenario: &'static str,
    /// A check name, or a prefix ending in `*`.
    pub check: &'static str,
    pub reason: &'static str,
}

impl Listed {
    fn matches(&self, scenario: &str, check: &str) -> bool {
        self.scenario == scenario
            && match self.check.strip_suffix('*') {
                Some(prefix) => check.starts_with(prefix),
                None => self.check == check,
            }
    }
}

const fn listed(scenario: &'static str, check: &'static str, reason: &'static str) -> Listed {
    Listed { scenario, check, reason }
}

/// Why the guest's role differs: Xen 4.17 on x86 builds only dom0 from boot modules, so the
/// guest is privileged there and a plain domU under microvisor.
const ROLE: &str = "role: dom0 (privileged) under Xen, a domU under microvisor";

/// Why the time leaf's TSC figures differ.
const TSC_ROLE: &str = "role: Xen 4.17 leaves a PV dom0's TSC settings unset (tsc_set_info returns early for it: kHz and scale 0); a domU on the real TSC, as here, gets the host's";

/// Differences on purpose, each with its reason.
pub const DELIBERATE: &[Listed] = &[
    listed("ptwr", "refused.foreign", "role: Xen lets dom0 map any frame no domain owns (I/O memory)"),
    listed("ptwr", "verdict", ROLE),
    listed(
        "iret-to-self",
        "*",
        "quirk: QEMU 7.2's TCG faults a ring-3 iretq on its stack under SMAP; microvisor detects it and turns SMAP off, Xen 4.17 (default smap) passes the #PF to the guest",
    ),
    listed("mm-hostile", "beyond-ram*", "role: Xen lets dom0 map any frame no domain owns (I/O memory)"),
    listed("mm-hostile", "sweep-accepted", "role: Xen lets dom0 map frames no domain owns (I/O memory)"),
    listed("mm-hostile", "verdict", ROLE),
    listed(
        "mm-hostile",
        "invlpg-noncanonical-*",
        "design: microvisor refuses INVLPG of a non-canonical address with EINVAL (Xen ignores it)",
    ),
    listed(
        "ipc-hostile",
        "status-of-dom0-port",
        "role: the guest is dom0 under Xen, so dom0's port is its own",
    ),
    listed("ipc-hostile", "map-grant-for-another-domain", ROLE),
    listed("ipc-hostile", "verdict", ROLE),
    listed(
        "mm-hostile",
        "foreign-*",
        "role: under Xen the guest is the only domain, so there is no foreign frame to try",
    ),
    listed(
        "noncanonical-rip",
        "syscall.fast.rax",
        "version: microvisor reports Xen 4.19's interface (xen_version 0x40013); the reference is 4.17 (0x40011)",
    ),
    listed(
        "badargs",
        "arch_debug_*",
        "design: arch_7 is microvisor's debug hypercall (dom0's, EPERM for a domU); Xen 4.17 has no arch_7 and answers ENOSYS",
    ),
    listed("badargs", "verdict", "design: the scenario expects microvisor's debug hypercall (arch_7), which Xen 4.17 lacks"),
    listed("trap-ud", "forced-cpuid.0x40000003.0.ecx-is-host-khz", TSC_ROLE),
    listed("trap-ud", "forced-cpuid.0x40000003.1.scale-is-host-khz", TSC_ROLE),
    listed(
        "evtchn-ops",
        "init_control_no_fifo",
        "design: no FIFO event channels (EOPNOTSUPP, the guest stays on 2-level); Xen 4.17 switches the guest to FIFO",
    ),
    listed("evtchn-ops", "verdict", "design: the scenario expects microvisor's answer without FIFO event channels"),
    listed(
        "memop",
        "memory_map",
        "role: Xen 4.17 has no pseudo-physical map for dom0 (ENOSYS: dom0 reads the machine map); libxl sets one for every PV domU, which then gets 0 as here",
    ),
    listed("memop", "get_features.dom0", ROLE),
    listed(
        "memop",
        "get_features.memory_op_vnode_supported",
        "design: no vNUMA (XENMEM_get_vnumainfo is ENOSYS), so XENFEAT_memory_op_vnode_supported is not claimed",
    ),
    listed(
        "mm-hostile",
        "machphys-foreign",
        "role: under Xen the guest is the only domain, so there is no foreign frame to try",
    ),
];

/// Differences that are bugs or gaps still to fix (see docs/conformance-status.md).
pub const KNOWN_OPEN: &[Listed] = &[];

/// What one system reported for one scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observations {
    pub system: System,
    /// `(check, value)` in the order reported; a check reported again gets `#2`, `#3`, ….
    pub checks: Vec<(String, String)>,
}

impl Observations {
    fn get(&self, check: &str) -> Option<&str> {
        self.checks.iter().find(|(c, _)| c == check).map(|(_, v)| v.as_str())
    }
}

/// The test guest's scenario name on a command line (`scenario=<name>`).
fn guest_scenario(cmdline: &str) -> &str {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("scenario=")).unwrap_or("")
}

/// Collects the `RESULT` lines of `scenario` from a serial log, plus two checks the runner
/// adds: `verdict` (the word after the last `TEST <scenario>`) and `end` (how the guest's
/// domain ended, `end` as given).
pub fn observations(system: System, log: &[String], scenario: &str, end: &str) -> Observations {
    let mut checks: Vec<(String, String)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut verdict = None;
    for line in log {
        if let Some(p) = format::parse(line) {
            let base = if p.scenario == scenario {
                p.check.to_string()
            } else {
                format!("{}/{}", p.scenario, p.check)
            };
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            let key = if *n == 1 { base } else { format!("{base}#{n}") };
            checks.push((key, p.value.to_string()));
        } else if let Some(rest) = line.find("TEST ").map(|i| &line[i + 5..]) {
            let mut words = rest.split_whitespace();
            if words.next() == Some(scenario) {
                verdict = words.next().map(str::to_string);
            }
        }
    }
    checks.push(("verdict".into(), verdict.unwrap_or_else(|| "none".into())));
    checks.push(("end".into(), end.to_string()));
    Observations { system, checks }
}

/// How the test guest ended under microvisor, where it is domain 1 (`Machine::scenario`).
pub fn microvisor_end(run: &Run) -> String {
    if let Some(reason) = run
        .log
        .iter()
        .find_map(|l| l.split_once("Domain 1 (tg) shut down: ").map(|(_, r)| r.trim().to_string()))
    {
        return reason;
    }
    match run.outcome {
        Outcome::HypervisorFault => "hypervisor-fault".into(),
        Outcome::Timeout => "timeout".into(),
        _ => "none".into(),
    }
}

/// How the test guest (dom0) ended under Xen.
pub fn xen_end(run: &Run) -> String {
    for line in run.log.iter().rev() {
        if line.contains("Hardware Dom0 halted") {
            return "poweroff".into();
        } else if line.contains("Hardware Dom0 crashed") {
            return "crash".into();
        } else if line.contains("Hardware Dom0 shutdown: rebooting") {
            return "reboot".into();
        } else if line.contains("Hardware Dom0 shutdown") {
            return "other".into();
        }
    }
    match run.outcome {
        Outcome::HypervisorFault => "hypervisor-fault".into(),
        Outcome::Timeout => "timeout".into(),
        _ => "none".into(),
    }
}

/// How one check compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    Same,
    /// Different values, not listed: a conformance bug (or a missing list entry).
    Differs,
    /// Reported by one system only.
    Missing,
    /// A listed deliberate difference.
    Deliberate(String),
    /// A listed open difference.
    KnownOpen(String),
    /// Listed as a difference but the two agree now: the list must lose the entry.
    Stale(String),
}

impl Verdict {
    /// Whether this row is acceptable as it stands.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Same | Verdict::Deliberate(_) | Verdict::KnownOpen(_))
    }

    fn word(&self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Differs => "DIFFERS",
            Verdict::Missing => "MISSING",
            Verdict::Deliberate(_) => "deliberate",
            Verdict::KnownOpen(_) => "known",
            Verdict::Stale(_) => "STALE-LIST-ENTRY",
        }
    }
}

/// One compared check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub check: String,
    pub microvisor: Option<String>,
    pub xen: Option<String>,
    pub verdict: Verdict,
}

/// Compares the two systems' observations of `scenario`, in microvisor's order, then the
/// checks only Xen reported.
pub fn compare(scenario: &str, mv: &Observations, xen: &Observations) -> Vec<Row> {
    compare_with(scenario, mv, xen, DELIBERATE, KNOWN_OPEN)
}

/// [`compare`] against given lists.
pub fn compare_with(
    scenario: &str,
    mv: &Observations,
    xen: &Observations,
    deliberate: &[Listed],
    open: &[Listed],
) -> Vec<Row> {
    let mut checks: Vec<&str> = mv.checks.iter().map(|(c, _)| c.as_str()).collect();
    checks.extend(xen.checks.iter().map(|(c, _)| c.as_str()).filter(|c| mv.get(c).is_none()));
    checks
        .into_iter()
        .map(|check| {
            let (m, x) = (mv.get(check), xen.get(check));
            let listed = deliberate
                .iter()
                .find(|l| l.matches(scenario, check))
                .map(|l| (true, l.reason))
                .or_else(|| open.iter().find(|l| l.matches(scenario, check)).map(|l| (false, l.reason)));
            // A wildcard entry covers agreeing checks too; only an exact entry can go stale.
            let exact =
                deliberate.iter().chain(open).any(|l| l.matches(scenario, check) && !l.check.ends_with('*'));
            let verdict = match (m == x, listed) {
                (true, Some((_, why))) if exact => Verdict::Stale(why.into()),
                (true, _) => Verdict::Same,
                (false, Some((true, why))) => Verdict::Deliberate(why.into()),
                (false, Some((false, why))) => Verdict::KnownOpen(why.into()),
                (false, None) if m.is_none() || x.is_none() => Verdict::Missing,
                (false, None) => Verdict::Differs,
            };
            Row { check: check.into(), microvisor: m.map(Into::into), xen: x.map(Into::into), verdict }
        })
        .collect()
}

/// The comparison of one scenario as a side-by-side table; with `only_differences`, the
/// rows that agree are left out.
pub fn table(scenario: &str, rows: &[Row], only_differences: bool) -> String {
    let w = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).clamp(5, 64);
    let v = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut out =
        format!("== {scenario}\n{:<w$}  {:<18} {:<18} verdict\n", "check", "microvisor", "xen 4.17");
    for r in rows.iter().filter(|r| !only_differences || r.verdict != Verdict::Same) {
        let why = match &r.verdict {
            Verdict::Deliberate(s) | Verdict::KnownOpen(s) | Verdict::Stale(s) => format!(" ({s})"),
            _ => String::new(),
        };
        out += &format!(
            "{:<w$}  {:<18} {:<18} {}{why}\n",
            r.check,
            v(&r.microvisor),
            v(&r.xen),
            r.verdict.word()
        );
    }
    let same = rows.iter().filter(|r| r.verdict == Verdict::Same).count();
    let bad = rows.iter().filter(|r| !r.verdict.is_ok()).count();
    out + &format!("{} checks: {same} same, {} listed, {bad} to fix\n", rows.len(), rows.len() - same - bad)
}

/// Deadline of one run (a standalone scenario takes seconds; the margin covers a loaded
/// machine).
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Runs `s` under microvisor as a domU.
pub fn run_microvisor(k: &Kernels, s: Scenario) -> crate::Result<(Run, Observations)> {
    let mut m = Machine::scenario(k, guest_scenario(s.cmdline));
    m.modules[1].args = format!("name=tg mem=32M -- {}", s.cmdline);
    let run = m.run(DEADLINE)?;
    let obs = observations(System::Microvisor, &run.log, guest_scenario(s.cmdline), &microvisor_end(&run));
    Ok((run, obs))
}

/// Runs `s` under Xen as dom0.
pub fn run_xen(k: &Kernels, x: &Xen, s: Scenario) -> crate::Result<(Run, Observations)> {
    let mut m = xen::machine(&x.image, &k.testguest, s.cmdline);
    m.hv_cmdline = format!("{} {} {}", xen::CMDLINE, xen::SAME_CONFIG, xen::VERBOSE);
    let run = m.run(DEADLINE)?;
    let obs = observations(System::Xen, &run.log, guest_scenario(s.cmdline), &xen_end(&run));
    Ok((run, obs))
}

/// The result of one scenario on both systems.
#[derive(Debug)]
pub struct Pair {
    pub scenario: Scenario,
    pub microvisor: (Run, Observations),
    /// `Err` when Xen is not available here.
    pub xen: Result<(Run, Observations), Unavailable>,
}

impl Pair {
    /// The compared rows, if Xen ran.
    pub fn rows(&self) -> Option<Vec<Row>> {
        let (_, x) = self.xen.as_ref().ok()?;
        Some(compare(self.scenario.label, &self.microvisor.1, x))
    }
}

/// Runs `s` on both systems at once (Xen only where `xen` is available).
pub fn run_pair(k: &Kernels, xen: &Result<Xen, Unavailable>, s: Scenario) -> crate::Result<Pair> {
    std::thread::scope(|scope| {
        let x = scope.spawn(|| match xen {
            Ok(x) => run_xen(k, x, s).map(Ok),
            Err(u) => Ok(Err(u.clone())),
        });
        let microvisor = run_microvisor(k, s)?;
        let xen = x.join().map_err(|_| "the Xen run panicked".to_string())??;
        Ok(Pair { scenario: s, microvisor, xen })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(system: System, lines: &[&str], end: &str) -> Observations {
        let log: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        observations(system, &log, "s", end)
    }

    #[test]
    fn collects_results_with_repeats_numbered_and_adds_verdict_and_end() {
        let o = obs(
            System::Xen,
            &[
                "(XEN) noise",
                "RESULT s a=0",
                "(d1) RESULT s a=EINVAL",
                "RESULT other b=yes",
                "RESULT s broken",
                "TEST s PASS 3 cases",
            ],
            "poweroff",
        );
        let want: Vec<(String, String)> =
            [("a", "0"), ("a#2", "EINVAL"), ("other/b", "yes"), ("verdict", "PASS"), ("end", "poweroff")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        assert_eq!(o.checks, want);
        assert_eq!(obs(System::Xen, &[], "timeout").get("verdict"), Some("none"));
    }

    #[test]
    fn every_difference_is_reported_with_both_sides() {
        let mv = obs(System::Microvisor, &["RESULT s a=0", "RESULT s b=1", "RESULT s only-mv=1"], "poweroff");
        let xen = obs(System::Xen, &["RESULT s a=0", "RESULT s b=2", "RESULT s only-xen=1"], "crash");
        let rows = compare_with("s", &mv, &xen, &[], &[]);
        let get = |c: &str| rows.iter().find(|r| r.check == c).unwrap_or_else(|| panic!("{c} missing"));
        assert_eq!(get("a").verdict, Verdict::Same);
        assert_eq!(get("b").verdict, Verdict::Differs);
        assert_eq!((get("b").microvisor.as_deref(), get("b").xen.as_deref()), (Some("1"), Some("2")));
        assert_eq!(get("only-mv").verdict, Verdict::Missing);
        assert_eq!(get("only-xen").verdict, Verdict::Missing);
        assert_eq!(get("end").verdict, Verdict::Differs);
        let t = table("s", &rows, true);
        assert!(t.contains("DIFFERS") && !t.lines().any(|l| l.starts_with("a ")), "{t}");
        assert!(t.ends_with("6 checks: 2 same, 0 listed, 4 to fix\n"), "{t}");
    }

    #[test]
    fn listed_differences_are_accepted_and_stale_entries_caught() {
        let mv = obs(
            System::Microvisor,
            &["RESULT s a=0", "RESULT s b=1", "RESULT s w.1=1", "RESULT s w.2=1"],
            "x",
        );
        let xen =
            obs(System::Xen, &["RESULT s a=0", "RESULT s b=2", "RESULT s w.1=2", "RESULT s w.2=1"], "x");
        let deliberate = [listed("s", "b", "why b"), listed("s", "w.*", "why w")];
        let open = [listed("s", "a", "fixed since")];
        let rows = compare_with("s", &mv, &xen, &deliberate, &open);
        let get = |c: &str| rows.iter().find(|r| r.check == c).unwrap().verdict.clone();
        assert_eq!(get("b"), Verdict::Deliberate("why b".into()));
        assert_eq!(get("w.1"), Verdict::Deliberate("why w".into()));
        assert_eq!(get("w.2"), Verdict::Same, "a wildcard also covers checks that agree");
        assert_eq!(get("a"), Verdict::Stale("fixed since".into()));
        assert!(!get("a").is_ok());
        let other = compare_with("t", &mv, &xen, &deliberate, &open);
        assert!(other.iter().any(|r| r.verdict == Verdict::Differs), "entries apply to their scenario only");
    }

    #[test]
    fn every_listed_entry_names_a_scenario_of_the_run() {
        for l in DELIBERATE.iter().chain(KNOWN_OPEN) {
            assert!(find(l.scenario).is_some(), "{l:?} names no scenario");
            assert!(!l.reason.is_empty());
        }
    }

    #[test]
    fn how_each_system_ended() {
        let run = |lines: &[&str], outcome| Run {
            log: lines.iter().map(|s| s.to_string()).collect(),
            outcome,
            stderr: String::new(),
            elapsed: Duration::ZERO,
        };
        let mv = run(
            &["(XEN) Domain 1 (tg) shut down: crash", "(XEN) Domain 0 (dom0) shut down: poweroff"],
            Outcome::Poweroff,
        );
        assert_eq!(microvisor_end(&mv), "crash");
        assert_eq!(microvisor_end(&run(&[], Outcome::Timeout)), "timeout");
        let x = run(&["(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting."], Outcome::Dom0Crash);
        assert_eq!(xen_end(&x), "crash");
        assert_eq!(
            xen_end(&run(&["(XEN) Hardware Dom0 halted: halting machine"], Outcome::Poweroff)),
            "poweroff"
        );
        assert_eq!(guest_scenario("scenario=privop insn=in"), "privop");
    }
}
