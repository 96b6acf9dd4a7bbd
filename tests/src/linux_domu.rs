//! What the tests that boot Debian's Linux as a PV domU share (tests/tests/linux*.rs): the
//! guest or a loud skip, the machine of dom0 and Linux, and the check of Linux's disk round
//! trip in the log and in the image. One place, so that each such test says only what it adds.

use crate::{fail, kernels, Machine, Module, Run, RunExt};
use std::time::Duration;
use xtask::linux::{self, LinuxGuest, Role};

/// Boot to poweroff takes 10-40 s under TCG on the shared machine; the margin is for load.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// The Linux domU's artefacts for `role` under `target/linux/<name>`, or `None` after a loud
/// skip (named `test`) where apt cannot fetch Debian's packages. Once they are fetched,
/// failing to build the guest (vmlinux, initramfs, disk) is a failure of the test, not a skip.
pub fn guest_or_skip(test: &str, name: &str, role: Role) -> Option<LinuxGuest> {
    if let Err(u) = linux::packages() {
        xtask::debian::skip(test, "Debian's kernel and busybox packages", &u);
        return None;
    }
    Some(linux::prepare(name, role).unwrap_or_else(|u| panic!("{u}")))
}

/// dom0 (64 MiB, `steps=0` and `dom0_options`) and the Linux domU `linux` (256 MiB, its disk
/// as xvda).
pub fn machine(g: &LinuxGuest, dom0_options: &str) -> Machine {
    let k = kernels();
    let mut m = Machine::with_hypervisor(&k.microvisor, "");
    let dom0 = format!("name=dom0 mem=64M -- steps=0 {dom0_options}");
    m.modules = vec![Module::new(&k.dom0, dom0.trim_end())];
    m.with_linux_domu(g, "linux", "256M")
}

/// Linux's disk round trip, checked: the log says, in this order, that its init mounted xvda,
/// read the host's file with the host's text, wrote [`linux::NEW_FILE`] and unmounted; and on
/// the host that file is in `g`'s disk image with what Linux wrote.
pub fn expect_disk_round_trip(run: &Run, g: &LinuxGuest) {
    let read = format!("LINUXINIT read {}: {}", linux::KNOWN_FILE, linux::KNOWN_TEXT.trim_end());
    let wrote = format!("LINUXINIT wrote {}", linux::NEW_FILE);
    let steps = ["LINUXINIT mounted /dev/xvda", &read, &wrote, "LINUXINIT unmounted /dev/xvda"];
    run.expect_in_order(&steps);
    let Some(disk) = &g.disk else { fail(run, "the Linux domU has no disk") };
    let back = linux::read_ext_file(disk, &format!("/{}", linux::NEW_FILE))
        .unwrap_or_else(|e| fail(run, &format!("reading {} back: {e}", linux::NEW_FILE)));
    assert_eq!(back, linux::WRITTEN.as_bytes());
}
