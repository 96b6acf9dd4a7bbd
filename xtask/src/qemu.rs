//! QEMU machines: the command line for a microvisor boot, installing QEMU where it is missing,
//! and running a machine with a deadline while collecting its serial log.

use crate::kernels::Kernels;
use crate::Result;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

use hypercall_abi::microvisor::exit as exit_value;

/// How a machine ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// dom0 powered off: the run succeeded.
    Poweroff,
    /// dom0 crashed or asked for a reboot.
    Dom0Crash,
    /// The hypervisor stopped on a fault or panic.
    HypervisorFault,
    /// The deadline passed; the machine was killed.
    Timeout,
    /// QEMU exited some other way (bad arguments, killed by a signal, ...).
    Other(Option<i32>),
}

impl Outcome {
    /// Decodes QEMU's exit status.
    pub fn from_status(code: Option<i32>) -> Outcome {
        let is = |v: u8| code == Some(exit_value::qemu_status(v));
        if is(exit_value::POWEROFF) {
            Outcome::Poweroff
        } else if is(exit_value::DOM0_CRASH) {
            Outcome::Dom0Crash
        } else if is(exit_value::HYPERVISOR_FAULT) {
            Outcome::HypervisorFault
        } else {
            Outcome::Other(code)
        }
    }

    /// The exit status `cargo xtask run` passes on.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Poweroff => 0,
            Outcome::Dom0Crash => 2,
            Outcome::HypervisorFault => 3,
            Outcome::Timeout => 4,
            Outcome::Other(_) => 1,
        }
    }
}

/// A Multiboot module: a guest kernel plus its options.
#[derive(Clone, Debug)]
pub struct Module {
    pub path: PathBuf,
    /// Options the hypervisor reads (`name=`, `mem=`), then `--` and the guest's command line.
    pub args: String,
}

impl Module {
    pub fn new(path: &Path, args: &str) -> Module {
        Module { path: path.to_path_buf(), args: args.to_string() }
    }
}

/// Which hypervisor a machine boots: how it is told to stop and how its end is recognised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// microvisor: it ends QEMU itself through `isa-debug-exit` with an [`Outcome`] status.
    #[default]
    Microvisor,
    /// Xen 4.17 ([`crate::xen`]): it halts the CPU, so the runner stops QEMU when the log
    /// says the machine is over.
    Xen,
}

impl System {
    /// The name used in tables and `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            System::Microvisor => "microvisor",
            System::Xen => "xen",
        }
    }
}

/// Everything that makes one boot.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Which hypervisor `hypervisor` is.
    pub system: System,
    pub hypervisor: PathBuf,
    pub hv_cmdline: String,
    /// dom0 first, then the domUs.
    pub modules: Vec<Module>,
    pub memory_mib: u32,
    /// Raw disk images attached as virtio-blk devices.
    pub disks: Vec<PathBuf>,
    /// A virtio-net NIC on QEMU's user network (isolated: `restrict=on`), with these host
    /// ports forwarded to guest addresses ([`crate::net`]); none: no NIC.
    pub forwards: Vec<crate::net::Forward>,
    /// `-icount shift=0`: guest time follows the instruction count (deterministic figures).
    pub icount: bool,
    /// Use KVM instead of TCG (for users on real hardware; not used by the tests).
    pub kvm: bool,
    /// Start halted with a gdb stub on :1234.
    pub gdb: bool,
    /// Where the hypervisor's second serial port (the trace records) goes.
    pub trace_file: Option<PathBuf>,
    pub extra_args: Vec<String>,
}

impl Machine {
    /// The standard machine: the hypervisor, dom0 and the demo domU.
    pub fn standard(k: &Kernels) -> Machine {
        let mut m = Machine::with_hypervisor(&k.microvisor, "");
        m.modules =
            vec![Module::new(&k.dom0, "name=dom0 mem=64M"), Module::new(&k.domu, "name=domU mem=32M")];
        m
    }

    /// A machine booting `hypervisor` (a Multiboot image) with `cmdline` and no modules yet,
    /// with the settings every machine shares (TCG, `-cpu max`, one CPU, 512 MiB).
    pub fn with_hypervisor(hypervisor: &Path, cmdline: &str) -> Machine {
        Machine {
            system: System::Microvisor,
            hypervisor: hypervisor.to_path_buf(),
            hv_cmdline: cmdline.to_string(),
            modules: Vec::new(),
            memory_mib: 512,
            disks: Vec::new(),
            forwards: Vec::new(),
            icount: false,
            kvm: false,
            gdb: false,
            trace_file: None,
            extra_args: Vec::new(),
        }
    }

    /// The benchmark machine: the latency floor measured by the hypervisor, dom0, and the
    /// test guest running every benchmark scenario (`scenario=bench`: bench-null, bench-mm,
    /// the event/grant ones, the event-channel ping-pong with dom0, and last the domain
    /// switch against a partner domain) with `iters` iterations; with the disk benchmarks on
    /// a scratch image, dom0 direct first and a second test guest through blkfront/blkback
    /// last.
    pub fn bench(k: &Kernels, iters: u64) -> Machine {
        Machine::bench_with(k, iters, true)
    }

    /// [`Machine::bench`], with the disk benchmarks only when `disks`: under `-icount` a disk
    /// completes when the host's I/O thread finishes, so disk figures are neither
    /// deterministic nor meaningful in instruction-count mode.
    ///
    /// Each benchmark has the CPU to itself, in turns: dom0 measures its disk at boot, before
    /// it starts xenstored; the bench guest waits until xenstored answers, runs everything
    /// and publishes `data/bench-done`; the disk guest waits for that (`after=1`). The
    /// partner of `sched.domain_switch` blocks until the bench guest's last benchmark tells
    /// it to start, and exits when told to stop. Domains get their ids in boot order (bench
    /// 1, partner 2), which is how they name each other.
    pub fn bench_with(k: &Kernels, iters: u64, disks: bool) -> Machine {
        let mut m = Machine::standard(k);
        // The guests print every figure through console_io, and console_io_16b measures the
        // unthrottled path: no guest console rate limit on this machine.
        // The pin-storm benchmark reads the hypervisor's longest page-table operation, a
        // machine-wide figure only dom0 may read by default.
        m.hv_cmdline = format!("floor={iters} guest_loglvl=all arch_debug=domu");
        m.modules = vec![
            Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0"),
            Module::new(
                &k.testguest,
                &format!("name=bench mem=32M -- scenario=bench iters={iters} switch-peer=2"),
            ),
            Module::new(&k.testguest, "name=partner mem=16M -- scenario=switch-partner peer=1"),
        ];
        if !disks {
            return m;
        }
        match crate::disk::allocated_image("bench", 128 << 20) {
            Ok(disk) => {
                m = m.with_vbd(&disk, "blkbench").dom0_options("blkbench=64");
                m.modules.push(Module::new(
                    &k.testguest,
                    "name=blkbench mem=32M -- scenario=blk-bench span=64 after=1",
                ));
            }
            Err(e) => eprintln!("xtask: no disk for the bench machine ({e}); disk figures skipped"),
        }
        m
    }

    /// dom0 plus the test guest running `scenario` (with extra guest options).
    pub fn scenario(k: &Kernels, scenario: &str) -> Machine {
        let mut m = Machine::standard(k);
        m.modules = vec![
            Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0"),
            Module::new(&k.testguest, &format!("name=tg mem=32M -- scenario={scenario}")),
        ];
        m
    }

    /// The QEMU command for this machine, with the serial console on stdout.
    pub fn command(&self) -> Command {
        let mut c = Command::new(QEMU);
        if self.kvm {
            c.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            c.args(["-accel", "tcg", "-cpu", "max"]);
        }
        c.args(["-machine", "pc", "-smp", "1", "-m"]).arg(format!("{}M", self.memory_mib));
        c.args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]);
        if let Some(t) = &self.trace_file {
            c.arg("-serial").arg(format!("file:{}", t.display()));
        }
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if self.icount {
            c.args(["-icount", "shift=0,align=off,sleep=off"]);
        }
        if self.gdb {
            c.args(["-s", "-S"]);
        }
        c.arg("-kernel").arg(&self.hypervisor);
        c.arg("-append").arg(&self.hv_cmdline);
        let modules: Vec<String> = self
            .modules
            .iter()
            // QEMU splits modules on ',' and takes ",," as a literal comma.
            .map(|m| format!("{} {}", m.path.display(), m.args).trim_end().replace(',', ",,"))
            .collect();
        if !modules.is_empty() {
            c.arg("-initrd").arg(modules.join(","));
        }
        for (i, d) in self.disks.iter().enumerate() {
            c.arg("-drive").arg(format!("file={},format=raw,if=none,id=disk{i},cache=unsafe", d.display()));
            c.arg("-device").arg(format!("virtio-blk-pci,drive=disk{i},disable-legacy=on"));
        }
        if let Some(netdev) = crate::net::netdev_arg(&self.forwards) {
            c.arg("-netdev").arg(netdev);
            c.args(["-device", "virtio-net-pci,netdev=n0,disable-legacy=on"]);
        }
        // A random-number source dom0 serves to the domUs (its `vrng` backend).
        c.args(["-device", "virtio-rng-pci,disable-legacy=on"]);
        c.args(&self.extra_args);
        c
    }

    /// Runs the machine to its end or `deadline`, collecting the serial log.
    pub fn run(&self, deadline: Duration) -> Result<Run> {
        self.run_inner(deadline, None, false, |_| None)
    }

    /// As [`Machine::run`], and with `watch = Some((needle, quiet))` also stops the machine
    /// (as a timeout) once `quiet` has passed without a line containing `needle` since the
    /// start or the last such line; the log then ends with [`STALL_LINE`] and the needle.
    pub fn run_watched(&self, deadline: Duration, watch: Option<(&str, Duration)>) -> Result<Run> {
        self.run_inner(deadline, watch, false, |_| None)
    }

    /// [`run`](Self::run), handing each serial line to `on_line` as it arrives (so a test can
    /// start talking to a guest once it says it is ready).
    pub fn run_watching(&self, deadline: Duration, mut on_line: impl FnMut(&str)) -> Result<Run> {
        self.run_inner(deadline, None, false, |l| {
            on_line(l);
            None
        })
    }

    /// [`run_watching`](Self::run_watching) where `on_line` may answer a line with bytes to
    /// type on the serial line (QEMU's stdin), as a person at the console would.
    pub fn run_typing(
        &self,
        deadline: Duration,
        on_line: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Run> {
        self.run_inner(deadline, None, true, on_line)
    }

    fn run_inner(
        &self,
        deadline: Duration,
        watch: Option<(&str, Duration)>,
        typing: bool,
        mut on_line: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Run> {
        ensure_qemu()?;
        let mut cmd = self.command();
        cmd.stdin(if typing { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {QEMU}: {e}"))?;
        let mut stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let s = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut log = Vec::new();
        let mut timed_out = false;
        let mut seen = Instant::now();
        let mut ended = None;
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if watch.is_some_and(|(needle, _)| line.contains(needle)) {
                        seen = Instant::now();
                    }
                    // Xen halts instead of ending QEMU: its last word ends the machine.
                    if self.system == System::Xen && ended.is_none() {
                        ended = crate::xen::outcome_of_line(&line);
                        if ended.is_some() {
                            let _ = child.kill();
                        }
                    }
                    if let Some(typed) = on_line(&line) {
                        // A QEMU that stopped reading has ended: its status says how.
                        if let Some(i) = stdin.as_mut() {
                            let _ = i.write_all(&typed).and_then(|_| i.flush());
                        }
                    }
                    log.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some((needle, quiet)) = watch.filter(|&(_, q)| seen.elapsed() >= q) {
                        log.push(format!("{STALL_LINE} `{needle}` for {} s", quiet.as_secs()));
                        timed_out = true;
                        let _ = child.kill();
                        break;
                    }
                    if started.elapsed() >= deadline {
                        timed_out = true;
                        let _ = child.kill();
                        break;
                    }
                }
            }
        }
        let status = wait(&mut child)?;
        let _ = reader.join();
        log.extend(rx.try_iter());
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let outcome = match ended {
            Some(o) => o,
            None if timed_out => Outcome::Timeout,
            None => Outcome::from_status(status),
        };
        Ok(Run { log, outcome, stderr, elapsed: started.elapsed() })
    }
}

fn wait(child: &mut Child) -> Result<Option<i32>> {
    child.wait().map(|s| s.code()).map_err(|e| format!("waiting for {QEMU}: {e}"))
}

/// The line [`Machine::run_watched`] adds when it stopped a machine that went quiet.
pub const STALL_LINE: &str = "xtask: stopped the machine: no line with";

/// A finished machine.
#[derive(Debug)]
pub struct Run {
    /// Serial console lines.
    pub log: Vec<String>,
    pub outcome: Outcome,
    /// What QEMU itself printed on stderr.
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The whole serial log as text.
    pub fn text(&self) -> String {
        self.log.join("\n")
    }

    /// True if some line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.log.iter().any(|l| l.contains(needle))
    }

    /// Index of the first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<usize> {
        self.log.iter().position(|l| l.contains(needle))
    }

    /// Lines containing `needle`.
    pub fn lines_with<'a>(&'a self, needle: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.log.iter().filter(move |l| l.contains(needle))
    }
}

/// Makes sure QEMU is installed: installs it with apt-get when running as root, otherwise
/// stops with the exact command to run.
pub fn ensure_qemu() -> Result<()> {
    if qemu_present() {
        return Ok(());
    }
    const INSTALL: &str = "apt-get install -y qemu-system-x86";
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let have_apt = Command::new("apt-get").arg("--version").stdout(Stdio::null()).status().is_ok();
    if is_root && have_apt {
        eprintln!("xtask: {QEMU} is missing; installing it with: apt-get update && {INSTALL}");
        let ok = Command::new("apt-get").arg("update").status().map(|s| s.success()).unwrap_or(false)
            && Command::new("apt-get")
                .args(["install", "-y", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if ok && qemu_present() {
            return Ok(());
        }
        return Err(format!("installing QEMU failed; run: sudo apt-get update && sudo {INSTALL}"));
    }
    Err(format!("{QEMU} is not installed; run: sudo apt-get update && sudo {INSTALL}"))
}

fn qemu_present() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
