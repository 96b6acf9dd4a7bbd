//! `cargo xtask`: build, run, test and benchmark microvisor. See the README for the commands.

use std::process::ExitCode;
use std::time::Duration;
use xtask::qemu::{ensure_qemu, Machine, Outcome};
use xtask::{kernels, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--fallback]    build the hypervisor and guest kernels (--fallback: for the fallback
                        target x86_64-unknown-linux-gnu, in target/kernel-fallback, as
                        `test` does)
  run [--gdb] [--kvm] [--icount] [--linux] [--serve <s>] [-- <qemu args>]
                        boot microvisor + dom0 + domU in QEMU (serial console here); the
                        domU serves HTTP on a host port for <s> seconds (default 15);
                        --linux adds Debian's Linux as a PV domU with a busybox shell
  test                  run every test: lint, the fallback target's kernel build, host
                        unit/property tests and QEMU boot tests
  lint                  cargo fmt --check and clippy (warnings are errors) on every crate
  trace [--bench]        boot with the hypervisor's event trace on and print a decoded
                        timeline with per-hypercall counts and latencies
  fuzz [--seed N] [--calls M] [--audit K] [--skip A-B,C,...] [--log-from N]
                        a hypercall-fuzzing campaign from a seed (random if not given): the
                        fuzzer domain, a neighbour doing verified disk I/O, the frame-table
                        audit every K hypercalls; prints calls/s, and on failure the command
                        that reproduces it and the last calls; --skip leaves operations out
                        (each draws from its own stream) to narrow a failure down
  bench [--mode wall|insns] [--accel kvm] [--iters N] [--compare OLD.json] [--no-net|--net-only]
        [--no-linux|--linux-only] [--peer xen [--xen-args A]]
                        boot the bench configuration (and the network one, and Linux's disk
                        benchmark next to dom0's: xtask/src/linuxbench.rs), print the
                        figures, write target/bench/results.json; with --peer xen, also run
                        the standalone benchmarks under Xen 4.17 and print both side by side
                        (--xen-args <options> adds to Xen's command line, e.g. spec-ctrl=no)
  conformance [--diff] [--logs] [scenario...]
                        run the test guest's standalone scenarios under microvisor (domU)
                        and Xen 4.17 (dom0) in the same QEMU and print both side by side
                        (--diff: only the rows that differ; --logs: both serial logs too)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") if args.get(1).is_some_and(|a| a == "--fallback") => {
            kernels::check_fallback().map(|_| ExitCode::SUCCESS)
        }
        Some("build") => kernels::build().map(|_| ExitCode::SUCCESS),
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("lint") => lint().map(|_| ExitCode::SUCCESS),
        Some("bench") => bench(&args[1..]),
        Some("trace") => trace(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("conformance") => conformance(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    ensure_qemu()?;
    let k = kernels::build()?;
    // The demo domU gets a virtual disk: target/disk.img, created on first use and kept.
    let disk = xtask::workspace_root().join("target/disk.img");
    xtask::disk::ensure_image(&disk, xtask::disk::RUN_DISK_BYTES)?;
    let mut m = Machine::standard(&k).with_vbd(&disk, "domU");
    let mut serve = 15u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--linux" => {
                // Debian's cloud kernel with our initramfs and a disk of its own, next to the
                // demo domU; its init leaves a busybox shell on its console.
                let guest = xtask::linux::prepare("run", xtask::linux::Role::DomU { shell: true })?;
                m = m.with_linux_domu(&guest, "linux", "256M").with_console_input("linux");
                println!(
                    "Linux domU: {} ({}), disk {}",
                    guest.kernel.release,
                    guest.kernel.package_version,
                    guest.disk.as_ref().map_or("none".into(), |d| d.display().to_string())
                );
            }
            "--gdb" => m.gdb = true,
            "--kvm" => m.kvm = true,
            "--icount" => m.icount = true,
            "--serve" => {
                serve =
                    it.next().and_then(|v| v.parse().ok()).ok_or("run: --serve needs a number of seconds")?
            }
            "--" => m.extra_args.extend(it.by_ref().cloned()),
            other => return Err(format!("run: unknown option `{other}`")),
        }
    }
    // The NIC, and the demo domU's HTTP server reachable from this host only.
    let port = xtask::net::demo_forward(&mut m, serve);
    if m.gdb {
        println!("QEMU is halted with a gdb stub on :1234. In another terminal:");
        println!(
            "  gdb {} -ex 'target remote :1234' -ex 'add-symbol-file {}' -ex 'add-symbol-file {}'",
            k.microvisor.display(),
            xtask::kernels::Kernels::with_debug_info(&k.dom0).display(),
            xtask::kernels::Kernels::with_debug_info(&k.domu).display()
        );
        let status = m.command().status().map_err(|e| format!("cannot start QEMU: {e}"))?;
        return Ok(ExitCode::from(Outcome::from_status(status.code()).exit_code() as u8));
    }
    let outcome = xtask::net::run_demo(&m, port, serve)?;
    if outcome != Outcome::Poweroff {
        eprintln!("xtask: machine ended with {outcome:?}");
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

fn bench(args: &[String]) -> Result<ExitCode> {
    use xtask::bench;
    use xtask::qemu::System;
    ensure_qemu()?;
    let k = kernels::build()?;
    let mut mode = "wall".to_string();
    let mut iters: u64 = 100_000;
    let mut compare = None;
    let mut kvm = false;
    let mut peer = None;
    let mut xen_args = String::new();
    let mut net = true;
    let mut only_net = false;
    let mut linux = true;
    let mut only_linux = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("bench: `{a}` needs a value"));
        match a.as_str() {
            "--mode" => mode = value()?,
            "--no-net" => net = false,
            "--net-only" => only_net = true,
            "--no-linux" => linux = false,
            "--linux-only" => only_linux = true,
            "--iters" => iters = value()?.parse().map_err(|_| "bench: --iters needs a number".to_string())?,
            "--compare" => compare = Some(value()?),
            "--accel" => kvm = value()? == "kvm",
            "--peer" => match value()?.as_str() {
                "xen" => peer = Some(System::Xen),
                other => return Err(format!("bench: --peer takes `xen`, not `{other}`")),
            },
            "--xen-args" => xen_args = value()?,
            other => return Err(format!("bench: unknown option `{other}`")),
        }
    }
    if mode != "wall" && mode != "insns" {
        return Err(format!("bench: --mode must be wall or insns, not `{mode}`"));
    }
    // Fetch the peer first: a missing reference should stop the run before it measures.
    let xen = match peer {
        Some(_) => Some(xtask::xen::hypervisor()?),
        None => None,
    };
    let mut m = xtask::qemu::Machine::bench_with(&k, iters, mode == "wall");
    m.icount = mode == "insns";
    m.kvm = kvm;
    let (mut results, mut log) = (Vec::new(), Vec::new());
    if !only_net && !only_linux {
        let run = m.run(Duration::from_secs(600))?;
        results = bench::parse(&run.log, &mode);
        if run.outcome != Outcome::Poweroff || results.is_empty() {
            eprintln!("{}", run.text());
            return Err(format!("bench run ended with {:?} and {} results", run.outcome, results.len()));
        }
        log = run.log;
    }
    // The network in a boot of its own (wall mode only: under -icount the host's side of
    // every transfer runs in real time, so the figures would mean nothing).
    if (net && !only_linux || only_net) && mode == "wall" && !kvm {
        let (net_results, run) = xtask::netbench::run(&k, xtask::netbench::Plan::FULL)?;
        results.extend(net_results);
        log.extend(run.log);
    }
    // Linux's disk figures next to dom0's in a boot of their own (wall mode only, as the
    // disks').
    if (linux && !only_net || only_linux) && mode == "wall" && !kvm {
        if let Some((linux_results, run)) = xtask::linuxbench::run(&k)? {
            results.extend(linux_results);
            log.extend(run.log);
        }
    }
    print!("{}", bench::table(&results));
    print!("{}", xtask::disk::blk_ratios(&results));
    print!("{}", xtask::linuxbench::summary(&results));
    print!("{}", xtask::netbench::summary(&results));
    let mut hists: Vec<(&str, xtask::plot::Hist)> =
        xtask::plot::parse_hists(&log).into_iter().map(|h| ("microvisor", h)).collect();
    if let Some(x) = &xen {
        // The same guest, standalone benchmarks only, as Xen's dom0, in the same QEMU mode.
        let mut m = xtask::xen::bench_machine(&x.image, &k.testguest, iters);
        m.hv_cmdline = format!("{} {xen_args}", m.hv_cmdline).trim().to_string();
        m.icount = mode == "insns";
        m.kvm = kvm;
        let run = m.run(Duration::from_secs(600))?;
        let theirs = bench::parse_system(&run.log, &mode, System::Xen);
        if run.outcome != Outcome::Poweroff
            || theirs.is_empty()
            || run.has("TEST bench-") && run.has(" FAIL ")
        {
            eprintln!("{}", run.text());
            return Err(format!("Xen bench run ended with {:?} and {} results", run.outcome, theirs.len()));
        }
        println!(
            "\nside by side with Xen {} as dom0 (same QEMU, {mode} mode; Xen's command line: {}):",
            x.version, m.hv_cmdline
        );
        print!("{}", bench::peer_table(&results, &theirs));
        hists.extend(xtask::plot::parse_hists(&run.log).into_iter().map(|h| ("xen", h)));
        results.extend(theirs);
    }
    let dir = xtask::workspace_root().join("target/bench");
    let path = xtask::write_json(&dir, "results.json", &results)?;
    println!("wrote {}", path.display());
    let mut names: Vec<&str> = hists.iter().map(|(_, h)| h.name.as_str()).collect();
    names.dedup();
    for name in names {
        let series: Vec<(&str, &xtask::plot::Hist)> =
            hists.iter().filter(|(_, h)| h.name == name).map(|(s, h)| (*s, h)).collect();
        let unit = results.iter().find(|r| r.name == name).map_or("tsc", |r| r.unit.as_str());
        let svg = dir.join(format!("{name}.svg"));
        xtask::plot::histogram_svg(&series, unit, &svg)?;
    }
    println!("wrote {} (one histogram per metric)", dir.join("<metric>.svg").display());
    if !only_net {
        let summary = dir.join("summary.svg");
        xtask::plot::summary_svg(&results, &summary)?;
        println!("wrote {}", summary.display());
    }
    if let Some(old) = compare {
        let text = std::fs::read_to_string(&old).map_err(|e| format!("{old}: {e}"))?;
        let old: Vec<bench::BenchResult> = serde_json::from_str(&text).map_err(|e| format!("{old}: {e}"))?;
        print!("{}", bench::compare(&old, &results));
    }
    Ok(ExitCode::SUCCESS)
}

fn trace(args: &[String]) -> Result<ExitCode> {
    ensure_qemu()?;
    let k = kernels::build()?;
    let mut m = match args.first().map(String::as_str) {
        Some("--bench") => Machine::bench(&k, 2_000),
        None => Machine::standard(&k),
        Some(other) => return Err(format!("trace: unknown option `{other}`")),
    };
    m.hv_cmdline = format!("{} trace=1", m.hv_cmdline).trim().to_string();
    let dir = xtask::workspace_root().join("target/trace");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("trace.bin");
    let _ = std::fs::remove_file(&file);
    m.trace_file = Some(file.clone());
    let run = m.run(Duration::from_secs(600))?;
    if run.outcome != Outcome::Poweroff {
        eprintln!("{}", run.text());
        return Err(format!("traced run ended with {:?}", run.outcome));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (records, bad) = xtask::trace::decode(&bytes);
    print!("{}", xtask::trace::report(&records, 40, 20));
    if bad > 0 {
        println!("{bad} undecodable frames skipped");
    }
    println!("raw trace: {} ({} bytes)", file.display(), bytes.len());
    let results = xtask::bench::parse(&run.log, "wall");
    if !results.is_empty() {
        // What tracing costs: compare these with `cargo xtask bench` (tracing off).
        println!("\nbenchmark figures of this traced boot (tracing on):");
        print!("{}", xtask::bench::table(&results));
    }
    Ok(ExitCode::SUCCESS)
}

fn fuzz(args: &[String]) -> Result<ExitCode> {
    ensure_qemu()?;
    let k = kernels::build()?;
    Ok(if xtask::fuzz::command(&k, args)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn test() -> Result<ExitCode> {
    ensure_qemu()?;
    lint()?;
    kernels::build()?;
    kernels::check_fallback()?;
    let skips = xtask::debian::skip_log();
    let _ = std::fs::remove_file(&skips);
    // Every test file runs even after one fails, so a red run shows all that is wrong.
    let ok = cargo(&["test", "--workspace", "--no-fail-fast"])?;
    // cargo's harness hides what passing tests print: repeat every skip where it is seen.
    if let Ok(text) = std::fs::read_to_string(&skips) {
        eprintln!("\n*** {} test(s) skipped parts that need a reference system:", text.lines().count());
        eprint!("{text}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn conformance(args: &[String]) -> Result<ExitCode> {
    use xtask::conformance::{self, SCENARIOS};
    let only_differences = args.iter().any(|a| a == "--diff");
    let logs = args.iter().any(|a| a == "--logs");
    let mut chosen = Vec::new();
    for a in args.iter().filter(|a| *a != "--diff" && *a != "--logs") {
        chosen.push(conformance::find(a).ok_or_else(|| {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.label).collect();
            format!("conformance: no scenario `{a}` (there are: {})", names.join(", "))
        })?);
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.to_vec();
    }
    ensure_qemu()?;
    let k = kernels::build()?;
    let xen = xtask::xen::hypervisor();
    match &xen {
        Ok(x) => println!("reference: Xen {} (Debian package {})", x.version, xtask::xen::PACKAGE),
        Err(u) => eprintln!("xtask: *** Xen side SKIPPED: {u}"),
    }
    let mut bad = 0;
    let mut report = Vec::new();
    for s in chosen {
        let pair = conformance::run_pair(&k, &xen, s)?;
        if logs {
            // Both serial logs, Xen's boot messages left out (up to "Freed ... init memory").
            println!("---- {} under microvisor ----\n{}", s.label, pair.microvisor.0.text());
            if let Ok((run, _)) = &pair.xen {
                let from = run.find("init memory").map_or(0, |i| i + 1);
                println!("---- {} under Xen 4.17 ----\n{}", s.label, run.log[from..].join("\n"));
            }
        }
        match pair.rows() {
            Some(rows) => {
                print!("{}", conformance::table(s.label, &rows, only_differences));
                bad += rows.iter().filter(|r| !r.verdict.is_ok()).count();
                report.push(serde_json::json!({ "scenario": s.label, "rows": rows }));
            }
            None => {
                println!("== {} (microvisor only: Xen unavailable)", s.label);
                for (c, v) in &pair.microvisor.1.checks {
                    println!("{c:<64}  {v}");
                }
            }
        }
    }
    let dir = xtask::workspace_root().join("target/conformance");
    let path = xtask::write_json(&dir, "results.json", &report)?;
    println!("wrote {}", path.display());
    if bad > 0 {
        println!("{bad} difference(s) neither deliberate nor known (xtask/src/conformance.rs lists those)");
    }
    Ok(if bad == 0 && xen.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every package is linted on its own: a workspace-wide build unifies features, and xtask's
/// std-using serde would then be linked into the `no_std` kernel binaries (duplicate
/// `panic_impl`), so `cargo clippy --workspace` cannot check them.
fn lint() -> Result<()> {
    ensure_lint_tools()?;
    if !cargo(&["fmt", "--all", "--check"])? {
        return Err("lint: `cargo fmt --all` would change files (run it and commit the result)".into());
    }
    for package in xtask::workspace_packages()? {
        if !cargo(&["clippy", "-q", "-p", &package, "--all-targets", "--", "-D", "warnings"])? {
            return Err(format!("lint: clippy found problems in `{package}`"));
        }
    }
    // Configurations no test boots but that must stay warning-free: the production dom0 and
    // hypervisor, without their test aids (linted on the host, then compiled for the kernel
    // target with the kernels' `-D warnings`).
    for (package, flags) in LINTED_VARIANTS {
        let mut args = vec!["clippy", "-q", "-p", package];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--all-targets", "--", "-D", "warnings"]);
        if !cargo(&args)? {
            return Err(format!("lint: clippy found problems in `{package}` with {}", flags.join(" ")));
        }
    }
    xtask::kernels::check_production().map_err(|e| format!("lint: the production kernels: {e}"))
}

/// Feature sets linted besides each package's defaults.
/// `--no-default-features` is the production configuration (no test aids) of dom0 and of the
/// hypervisor.
const LINTED_VARIANTS: &[(&str, &[&str])] =
    &[("dom0", &["--no-default-features"]), ("microvisor", &["--no-default-features"])];

/// rustfmt and clippy are rustup components a minimal toolchain may lack: add them where
/// rustup can, otherwise say exactly what to run.
fn ensure_lint_tools() -> Result<()> {
    let have = |tool: &str| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        std::process::Command::new(cargo)
            .args([tool, "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    let added = std::process::Command::new("rustup")
        .args(["component", "add", "rustfmt", "clippy"])
        .status()
        .is_ok_and(|s| s.success());
    if added && have("fmt") && have("clippy") {
        Ok(())
    } else {
        Err("lint needs rustfmt and clippy: run `rustup component add rustfmt clippy`".into())
    }
}

/// Runs cargo in the workspace root; Ok(false) when it ran and failed.
fn cargo(args: &[&str]) -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(xtask::workspace_root())
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo {}: {e}", args.join(" ")))?;
    Ok(status.success())
}
