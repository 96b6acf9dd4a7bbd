//! Debian's Linux as a domU beside one of our own domUs, each with its own disk served by
//! dom0's blkback (issue 12 item 5): destroying one leaves the other's disk working.
//!
//! The neighbour is the test guest's `fuzz-disk` rather than the demo domU: it writes, reads
//! back and compares a pattern on its own disk round after round and says where it wrote
//! last, which the host checks in the image; the demo domU does one pass and no verification.
//!
//! Order comes from hand-shakes, not timing: the host types [`linux::GO`] on Linux's console
//! only once the neighbour says its disk is busy, so Linux touches its disk after that; the
//! neighbour learns that Linux is gone from `@releaseDomain`, which dom0's toolstack fires when
//! it retires Linux (it grants the neighbour the watch, `release-watch=`: a domU may not read
//! `/local/domain`, so Linux's directory reads `EACCES` to it whether there or gone, as under
//! Xen). Both images are checked on the host afterwards. Skips loudly where apt cannot fetch
//! the Debian packages.

use std::time::Duration;
use tests::{field, kernels, Machine, Module, Outcome, RunExt};
use xtask::linux::{self, Beside, Role};

/// Linux's boot to its end takes 10-40 s under TCG on the shared machine; the margin is for load.
const DEADLINE: Duration = Duration::from_secs(300);
/// Domain ids in boot order: dom0, Linux, our neighbour.
const LINUX: u16 = 1;
const NEIGHBOUR: u16 = 2;
/// Verified rounds the neighbour does once Linux is gone.
const AFTER_GONE: u64 = 3;

/// dom0, Linux (`linux`, its disk as xvda, the serial line's input) and the neighbour (`disk`,
/// its own scratch disk) watching `@releaseDomain`.
fn beside_machine(g: &linux::LinuxGuest, ours: &std::path::Path, neighbour_args: &str) -> Machine {
    let k = kernels();
    let mut m = Machine::with_hypervisor(&k.microvisor, "");
    m.modules = vec![Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0 release-watch=disk")];
    let mut m = m.with_linux_domu(g, "linux", "256M").with_console_input("linux");
    m.modules.push(Module::new(&k.testguest, &format!("name=disk mem=32M -- {neighbour_args}")));
    m.with_vbd(ours, "disk")
}

#[test]
fn linux_crashed_with_writes_in_flight_leaves_our_domu_and_its_disk_working() {
    let test = "linux_beside::linux_crashed_with_writes_in_flight_leaves_our_domu_and_its_disk_working";
    if let Err(u) = linux::packages() {
        xtask::debian::skip(test, "Debian's kernel and busybox packages", &u);
        return;
    }
    let g = linux::prepare("beside-crash", Role::DomU { shell: false })
        .and_then(|g| g.beside(Beside::CrashInFlight))
        .unwrap_or_else(|u| panic!("{u}"));
    let linux_disk = g.disk.clone().expect("a domU has a disk");
    let ours = xtask::disk::scratch_image("linux-beside", 16 << 20).unwrap_or_else(|e| panic!("{e}"));
    let m = beside_machine(
        &g,
        &ours,
        &format!("scenario=fuzz-disk peer={LINUX} until-released={AFTER_GONE} seed=4242"),
    );
    let busy = format!("(d{NEIGHBOUR}) fuzz-disk: busy (round 1 done), watching @releaseDomain");
    let (mut busy_seen, mut waiting_seen, mut typed) = (false, false, false);
    let run = m
        .run_typing(DEADLINE, |line| {
            busy_seen |= line.contains(&busy);
            waiting_seen |= line.contains(linux::WAITING);
            (busy_seen && waiting_seen && !std::mem::replace(&mut typed, true))
                .then(|| format!("{}\n", linux::GO).into_bytes())
        })
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));

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
        "Domain 1 (linux) shut down: crash",
        "dom0: d1 released and destroyed",
        &released,
        "TEST fuzz-disk PASS",
        "Domain 2 (disk) shut down: poweroff",
    ];
    for w in markers.windows(2) {
        run.expect_order(w[0], w[1]);
    }
    run.expect_order(linux::WAITING, "(d0) [linux] LINUXINIT going on")
        .expect_line("dom0: d2 (disk) may watch @releaseDomain")
        .expect_outcome(Outcome::Poweroff)
        .expect_no_line("FAILED")
        .expect_no_line("TEST fuzz-disk FAIL")
        .expect_no_line("d1v0 crashed")
        .expect_no_line("d2v0 crashed")
        .expect_no_line("Domain 2 (disk) shut down: crash");
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
    let back = linux::read_ext_file(&linux_disk, &format!("/{}", linux::NEW_FILE))
        .unwrap_or_else(|e| panic!("reading {} back: {e}\n{}", linux::NEW_FILE, run.text()));
    assert_eq!(back, linux::WRITTEN.as_bytes());
    xtask::fuzz::check_image(&run, &ours).unwrap_or_else(|e| panic!("{e}\n{}", run.text()));
}
