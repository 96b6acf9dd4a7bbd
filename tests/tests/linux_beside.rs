//! Debian's Linux as a domU beside one of our own domUs, each with its own disk served by
//! dom0's blkback (issue 12 item 5): destroying one leaves the other's disk working. One test
//! per direction: Linux crashes itself with writes in flight and our domU goes on; our domU
//! crashes itself with writes in flight and Linux goes on. A third boots `cargo xtask run
//! --linux`'s machine (the demo domU beside Linux) and checks both disks.
//!
//! The neighbour is the test guest's `fuzz-disk` rather than the demo domU: it writes, reads
//! back and compares a pattern on its own disk round after round and says where it wrote
//! last, which the host checks in the image; the demo domU does one pass and no verification.
//!
//! Order comes from hand-shakes, not timing: the host types [`linux::GO`] on Linux's console
//! only once the neighbour says its disk is busy, so Linux touches its disk after that; the
//! survivor learns that the other is gone from `@releaseDomain`, which dom0's toolstack fires
//! when it retires a domain (it grants the survivor the watch, `release-watch=`: a domU may not
//! read `/local/domain`, so another's directory reads `EACCES` to it whether there or gone, as
//! under Xen); our domU crashes only once Linux, after a verified round, made a node of its
//! own readable to it. The images are checked on the host afterwards. Skips loudly where apt
//! cannot fetch the Debian packages.

use std::path::Path;
use tests::linux_domu::{self, DEADLINE};
use tests::{field, kernels, Machine, Module, Outcome, RunExt};
use xtask::linux::{self, Beside, LinuxGuest, Role};

/// Domain ids in boot order: dom0, Linux, our neighbour.
const LINUX: u16 = 1;
const NEIGHBOUR: u16 = 2;
/// Verified rounds the neighbour does once Linux is gone.
const AFTER_GONE: u64 = 3;

/// dom0, Linux (`linux`, its disk as xvda, the serial line's input) and the neighbour (`disk`,
/// its own scratch disk); `watchers` may watch `@releaseDomain`.
fn beside_machine(g: &LinuxGuest, ours: &Path, watchers: &str, neighbour_args: &str) -> Machine {
    let mut m = linux_domu::machine(g, &format!("release-watch={watchers}")).with_console_input("linux");
    m.modules.push(Module::new(&kernels().testguest, &format!("name=disk mem=32M -- {neighbour_args}")));
    m.with_vbd(ours, "disk")
}

/// The file `name` (a path from the root) in Linux's disk image `g`, read on the host.
fn linux_file(run: &xtask::qemu::Run, g: &LinuxGuest, name: &str) -> Vec<u8> {
    let disk = g.disk.as_ref().expect("a domU has a disk");
    linux::read_ext_file(disk, &format!("/{name}"))
        .unwrap_or_else(|e| panic!("reading {name} back: {e}\n{}", run.text()))
}

/// dom0 answered no request of either vbd with an error: each disconnect line's `errors=` and
/// `unsupported=` are 0, and both vbds were disconnected.
fn expect_no_vbd_errors(run: &xtask::qemu::Run) {
    let lines: Vec<&String> = run.lines_with("/vbd51712: disconnected").collect();
    assert_eq!(lines.len(), 2, "{}", run.text());
    for l in lines {
        for key in ["errors", "unsupported"] {
            assert_eq!(field(run, l, key), 0, "{key} in {l}");
        }
    }
}

/// Runs `m`, typing [`linux::GO`] on Linux's console once both the neighbour has said `busy`
/// and Linux waits for it.
fn run_with_go(m: &Machine, busy: &str) -> xtask::qemu::Run {
    let (mut busy_seen, mut waiting_seen, mut typed) = (false, false, false);
    m.run_typing(DEADLINE, |line| {
        busy_seen |= line.contains(busy);
        waiting_seen |= line.contains(linux::WAITING);
        (busy_seen && waiting_seen && !std::mem::replace(&mut typed, true))
            .then(|| format!("{}\n", linux::GO).into_bytes())
    })
    .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"))
}

#[test]
fn linux_crashed_with_writes_in_flight_leaves_our_domu_and_its_disk_working() {
    let test = "linux_beside::linux_crashed_with_writes_in_flight_leaves_our_domu_and_its_disk_working";
    let Some(g) = linux_domu::guest_or_skip(test, "beside-crash", Role::DomU { shell: false }) else {
        return;
    };
    let g = g.beside(Beside::CrashInFlight).unwrap_or_else(|u| panic!("{u}"));
    let ours = xtask::disk::scratch_image("linux-beside", 16 << 20).unwrap_or_else(|e| panic!("{e}"));
    let m = beside_machine(
        &g,
        &ours,
        "disk",
        &format!("scenario=fuzz-disk peer={LINUX} until-released={AFTER_GONE} seed=4242"),
    );
    let busy = format!("(d{NEIGHBOUR}) fuzz-disk: busy (round 1 done), watching @releaseDomain");
    let run = run_with_go(&m, &busy);

    let wrote = format!("LINUXINIT wrote {}", linux::NEW_FILE);
    let released = format!("(d{NEIGHBOUR}) fuzz-disk: @releaseDomain fired after ");
    // The neighbour is busy before Linux goes on (the host typed `go` only then); Linux
    // writes its file, unmounts, mounts again and crashes with writes in flight; dom0 destroys
    // it and only then does the neighbour hear of it; it ends (PASS) after that.
    let markers = [
        busy.as_str(),
        "(d0) [linux] LINUXINIT going on",
        "LINUXINIT mounted /dev/xvda",
        &wrote,
        "LINUXINIT unmounted /dev/xvda",
        "LINUXINIT mounted /dev/xvda again",
        linux::CRASH_LINE,
        "dom0: d1 (linux) shut down (crash",
        "dom0: d1 released and destroyed",
        &released,
        "TEST fuzz-disk PASS",
        "Domain 2 (disk) shut down: poweroff",
    ];
    run.expect_in_order(&markers)
        .expect_order(linux::WAITING, "(d0) [linux] LINUXINIT going on")
        .expect_line("Domain 1 (linux) shut down: crash")
        .expect_line("dom0: d2 (disk) may watch @releaseDomain")
        .expect_outcome(Outcome::Poweroff)
        .expect_no_line("FAILED")
        .expect_no_line("TEST fuzz-disk FAIL")
        .expect_no_line("d1v0 crashed")
        .expect_no_line("d2v0 crashed")
        .expect_no_line("Domain 2 (disk) shut down: crash");
    expect_no_vbd_errors(&run);
    // Linux crashed with its blkfront's writes outstanding.
    let crash = run.lines_with(linux::CRASH_LINE).next().unwrap_or_else(|| panic!("{}", run.text()));
    let in_flight: u64 = field(&run, crash, "inflight_writes");
    assert!(in_flight > 0, "no write in flight at the crash: {crash}");
    // The neighbour kept its disk working for AFTER_GONE verified rounds once Linux was gone.
    let pass = run.lines_with("TEST fuzz-disk PASS").next().unwrap_or_else(|| panic!("{}", run.text()));
    let (released_at, rounds): (u64, u64) = (field(&run, pass, "released_at"), field(&run, pass, "rounds"));
    assert!(released_at >= 1, "{pass}");
    assert_eq!(rounds, released_at + AFTER_GONE, "{pass}");
    // What each guest claims, checked on the host: Linux's file (written, synced and
    // unmounted before the crash) in its image, and the neighbour's last round (written after
    // Linux was gone) in its own.
    assert_eq!(linux_file(&run, &g, linux::NEW_FILE), linux::WRITTEN.as_bytes());
    xtask::fuzz::check_image(&run, &ours).unwrap_or_else(|e| panic!("{e}\n{}", run.text()));
}

/// Verified rounds Linux does once the neighbour is gone.
const LINUX_AFTER: u32 = 3;

#[test]
fn our_domu_crashed_with_writes_in_flight_leaves_linux_and_its_disk_working() {
    let test = "linux_beside::our_domu_crashed_with_writes_in_flight_leaves_linux_and_its_disk_working";
    let Some(g) = linux_domu::guest_or_skip(test, "beside-outlive", Role::DomU { shell: false }) else {
        return;
    };
    let beside = Beside::OutlivesNeighbour { me: LINUX, neighbour: NEIGHBOUR, after: LINUX_AFTER };
    let g = g.beside(beside).unwrap_or_else(|u| panic!("{u}"));
    // 64 MiB: the neighbour's writes in flight at its crash go past its chunks.
    let ours = xtask::disk::scratch_image("linux-beside-crash", 64 << 20).unwrap_or_else(|e| panic!("{e}"));
    let told = format!("/local/domain/{LINUX}/{}", linux::TOLD_NODE);
    let m = beside_machine(
        &g,
        &ours,
        "linux",
        &format!("scenario=fuzz-disk peer={LINUX} until-released=0 crash-on={told} seed=77"),
    );
    let busy = format!("(d{NEIGHBOUR}) fuzz-disk: busy (round 1 done), watching @releaseDomain");
    let run = run_with_go(&m, &busy);

    // The neighbour is busy before Linux goes on; Linux does a verified round and makes its
    // node readable to the neighbour, which only then crashes itself with writes in flight;
    // dom0 destroys it; only then does Linux hear @releaseDomain, and it does its last
    // rounds after that.
    // Linux's lines reach the log through dom0's console relay, the others' directly, so
    // Linux's are ordered against dom0's own lines (the relay drains a console before dom0
    // acts on what that domain did next).
    let linux_side = [
        busy.as_str(),
        "(d0) [linux] LINUXINIT going on",
        "LINUXINIT mounted /dev/xvda again",
        "LINUXINIT round n=1 ",
        "dom0: d2 (disk) shut down (crash",
        "dom0: d2 released and destroyed",
        "LINUXINIT @releaseDomain fired before round ",
        linux::ROUNDS_LINE,
        "LINUXINIT unmounted /dev/xvda again",
        "dom0: d1 (linux) shut down (poweroff",
    ];
    let neighbour_side = [
        busy.as_str(),
        &format!("(d{NEIGHBOUR}) fuzz-disk: {told} readable after "),
        &format!("(d{NEIGHBOUR}) fuzz-disk: crashing with "),
        "Domain 2 (disk) shut down: crash",
        "dom0: d2 (disk) shut down (crash",
    ];
    run.expect_in_order(&linux_side)
        .expect_in_order(&neighbour_side)
        .expect_order("LINUXINIT watching @releaseDomain", "(d0) [linux] LINUXINIT going on")
        .expect_line("dom0: d1 (linux) may watch @releaseDomain")
        .expect_line("dom0: d2/vbd51712: domain fully released")
        .expect_outcome(Outcome::Poweroff)
        .expect_no_line("FAILED")
        .expect_no_line("TEST fuzz-disk")
        .expect_no_line("d1v0 crashed")
        .expect_no_line("d2v0 crashed")
        .expect_no_line("Domain 1 (linux) shut down: crash");
    expect_no_vbd_errors(&run);
    // The neighbour crashed with requests outstanding.
    let crashing =
        run.lines_with("fuzz-disk: crashing with ").next().unwrap_or_else(|| panic!("{}", run.text()));
    let outstanding: u64 = crashing
        .split("crashing with ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{crashing}"));
    assert!(outstanding > 0, "{crashing}");
    // Linux did LINUX_AFTER verified rounds once the neighbour was gone, each read back as
    // written (a mismatch prints FAILED), and the last is in its image.
    let end = run.lines_with(linux::ROUNDS_LINE).next().unwrap_or_else(|| panic!("{}", run.text()));
    let (after, rounds): (u64, u64) = (field(&run, end, "after_release"), field(&run, end, "rounds"));
    assert_eq!(after, u64::from(LINUX_AFTER), "{end}");
    assert!(rounds > u64::from(LINUX_AFTER), "{end}");
    assert_eq!(run.lines_with("LINUXINIT round n=").count() as u64, rounds, "{end}");
    let last_crc = linux::field(end, "last_crc32").unwrap_or_else(|| panic!("{end}"));
    let back = linux_file(&run, &g, linux::ROUND_FILE);
    assert_eq!(back.len(), 1 << 20);
    assert_eq!(format!("{:08x}", linux::crc32(&back)), last_crc, "{end}");
    assert_eq!(linux_file(&run, &g, linux::NEW_FILE), linux::WRITTEN.as_bytes());
}

/// `cargo xtask run --linux`'s machine without its NIC and shell: the demo domU (its disk
/// `target/disk.img` there, a scratch image here) and Linux, each with its own disk, both
/// verified on the host. The demo domU does one round trip and powers off; Linux's disk steps
/// run whether it is still there or already destroyed (no order is claimed here: the tests
/// above prove each side outliving the other).
#[test]
fn the_run_linux_machine_has_linux_beside_the_demo_domu_each_with_a_verified_disk() {
    let test = "linux_beside::the_run_linux_machine_has_linux_beside_the_demo_domu_each_with_a_verified_disk";
    let Some(g) = linux_domu::guest_or_skip(test, "beside-demo", Role::DomU { shell: false }) else { return };
    let demo = xtask::disk::scratch_image("linux-beside-demo", 16 << 20).unwrap_or_else(|e| panic!("{e}"));
    let m = Machine::standard(&kernels())
        .with_vbd(&demo, "domU")
        .dom0_options("steps=0")
        .with_linux_domu(&g, "linux", "256M");
    let run = m.run(DEADLINE).unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("vbd=domU,linux")
        .expect_line("[domU] domU: wrote, flushed and read back sector 32767: ok")
        .expect_line("[domU] domU: virtual disk disconnected")
        .expect_line(&format!("[linux] LINUXINIT wrote {}", linux::NEW_FILE))
        .expect_line("[linux] LINUXINIT unmounted /dev/xvda")
        .expect_line("Domain 1 (domU) shut down: poweroff")
        .expect_line("Domain 2 (linux) shut down: poweroff")
        .expect_no_line("FAILED")
        .expect_no_line("d1v0 crashed")
        .expect_no_line("d2v0 crashed");
    let data = std::fs::read(&demo).unwrap_or_else(|e| panic!("{}: {e}", demo.display()));
    assert!(data[data.len() - 512..].starts_with(b"microvisor domU was here\n"));
    assert_eq!(linux_file(&run, &g, linux::NEW_FILE), linux::WRITTEN.as_bytes());
}
