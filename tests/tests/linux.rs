//! Debian's unmodified cloud kernel (`linux-image-cloud-amd64`, CONFIG_XEN_PV=y) as a PV domU
//! of microvisor next to dom0 (issue 12): it boots to our initramfs's init, loads
//! xen-blkfront and xen-netfront, mounts its disk through dom0's blkback, reads a file the host
//! put there, writes one the host then reads back out of the image (debugfs), and powers off
//! with SCHEDOP_shutdown. Its console (hvc0) reaches the log through dom0's console backend as
//! `(d0) [linux] ...`. Skips loudly where apt cannot fetch the packages.

use std::time::Duration;
use tests::{kernels, Machine, Module, Outcome, RunExt};
use xtask::linux::{self, Role};

/// Boot to poweroff takes 10-40 s under TCG on the shared machine; the margin is for load.
const DEADLINE: Duration = Duration::from_secs(300);

/// The Linux domU's artefacts under `target/linux/<name>`, or `None` after a loud skip where
/// apt cannot fetch Debian's packages. Once they are fetched, failing to build the guest
/// (vmlinux, initramfs, disk) is a failure of the test, not a skip.
fn guest_or_skip(test: &str, name: &str) -> Option<linux::LinuxGuest> {
    if let Err(u) = linux::packages() {
        xtask::debian::skip(test, "Debian's kernel and busybox packages", &u);
        return None;
    }
    Some(linux::prepare(name, Role::DomU { shell: false }).unwrap_or_else(|u| panic!("{u}")))
}

/// dom0 and the Linux domU `linux` (256 MiB, its disk as xvda).
fn linux_machine(g: &linux::LinuxGuest) -> Machine {
    let k = kernels();
    let mut m = Machine::with_hypervisor(&k.microvisor, "");
    m.modules = vec![Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0")];
    m.with_linux_domu(g, "linux", "256M")
}

#[test]
fn debian_linux_boots_as_a_domu_and_uses_its_disk_through_blkback() {
    let Some(g) = guest_or_skip("linux::debian_linux_boots_as_a_domu", "domu-test") else { return };
    let disk = g.disk.clone().expect("a domU has a disk");
    let run = linux_machine(&g).run(DEADLINE).unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    // Each marker is a step further; the first missing one says where Linux stopped.
    let read = format!("LINUXINIT read {}: {}", linux::KNOWN_FILE, linux::KNOWN_TEXT.trim_end());
    let wrote = format!("LINUXINIT wrote {}", linux::NEW_FILE);
    let markers = [
        "Linux version 6.",
        "Booting kernel on Xen",
        "xen:grant_table: Grant tables using version 1 layout",
        "Run /init as init process",
        "(d0) [linux] LINUXINIT start",
        "LINUXINIT insmod xen_blkfront.ko ok",
        "LINUXINIT insmod xen_netfront.ko ok",
        "LINUXINIT mounted /dev/xvda",
        &read,
        &wrote,
        "LINUXINIT unmounted /dev/xvda",
        "LINUXINIT poweroff",
        "Domain 1 (linux) shut down: poweroff",
    ];
    for w in markers.windows(2) {
        run.expect_order(w[0], w[1]);
    }
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("blkfront: xvda:")
        .expect_no_line("FAILED")
        // dom0's toolstack writes cpu/<n>/availability as xl does; without it Linux's
        // xen cpu_hotplug complains at boot.
        .expect_no_line("Unable to read cpu state")
        .expect_no_line("d1v0 crashed");
    // What the guest claims, checked on the host: the file is in the image.
    let back = linux::read_ext_file(&disk, &format!("/{}", linux::NEW_FILE))
        .unwrap_or_else(|e| panic!("reading {} back: {e}\n{}", linux::NEW_FILE, run.text()));
    assert_eq!(back, linux::WRITTEN.as_bytes());
}
