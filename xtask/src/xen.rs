//! Xen 4.17 as the reference system: Debian's `xen-hypervisor-4.17-amd64`, booted in the same
//! QEMU (TCG, `-cpu max`, one CPU) as microvisor's machines, with a PV kernel of ours as its
//! dom0 (`-initrd`). Xen builds only dom0 from boot modules, so what runs here is what needs
//! nothing but the hypervisor: no xenstore, no second domain.
//!
//! When dom0 shuts down Xen prints why and halts the CPU without ending QEMU, so the runner
//! reads the serial log and stops the machine itself ([`outcome_of_line`]).

use crate::debian::{self, Unavailable};
use crate::qemu::{Machine, Module, Outcome, System};
use std::path::{Path, PathBuf};

/// The Debian package that ships Xen 4.17.
pub const PACKAGE: &str = "xen-hypervisor-4.17-amd64";
/// The gzipped Multiboot image inside it.
const IMAGE_GZ: &str = "boot/xen-4.17-amd64.gz";

/// Xen's command line for our runs: its console on COM1 (the serial port the runner reads),
/// dom0's memory, and `noreboot` so that a crashed dom0 halts (and says so) instead of
/// rebooting in five seconds.
pub const CMDLINE: &str = "console=com1 dom0_mem=64M noreboot";
/// Added for conformance runs: Xen then prints every warning it has about the guest (a release
/// build like Debian's compiles its debug-only `gdprintk` explanations out; its `gprintk`
/// warnings remain), which helps reading a difference.
pub const VERBOSE: &str = "loglvl=all guest_loglvl=all";

/// Added for conformance runs: the Xen configuration microvisor answers as. Grant tables v1
/// only (`gnttab=max-ver:1`): microvisor offers no v2, and `GNTTABOP_set_version(2)` then
/// gets ENOSYS on both (issue 11 item 8); a default Xen 4.17 allows v2.
pub const SAME_CONFIG: &str = "gnttab=max-ver:1";

/// Xen's hypervisor image (the gunzipped Multiboot ELF) and the package version it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xen {
    pub image: PathBuf,
    pub version: String,
}

/// Fetches Xen (once per checkout) and returns its Multiboot image.
pub fn hypervisor() -> Result<Xen, Unavailable> {
    // One gunzip at a time in this process; across processes the rename is atomic.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let pkg = debian::fetch(PACKAGE)?;
    let gz = pkg.root.join(IMAGE_GZ);
    let image = pkg.root.join("boot/xen-4.17-amd64");
    if !image.exists() {
        let fail = |reason: String| Unavailable {
            what: format!("Xen's image {}", gz.display()),
            command: format!("gunzip -k {}", gz.display()),
            reason,
        };
        let bytes = std::fs::read(&gz).map_err(|e| fail(e.to_string()))?;
        let elf = crate::linux::gunzip(&bytes).map_err(fail)?;
        let tmp = image.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, elf)
            .and_then(|_| std::fs::rename(&tmp, &image))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(Xen { image, version: pkg.version })
}

/// A machine that boots Xen with `dom0` (a PV kernel) as its dom0, `dom0_cmdline` as the
/// kernel's command line, and the same QEMU settings as [`Machine::standard`].
pub fn machine(xen: &Path, dom0: &Path, dom0_cmdline: &str) -> Machine {
    let mut m = Machine::with_hypervisor(xen, CMDLINE);
    m.system = System::Xen;
    // Xen takes dom0's command line from its module's string, after the image's name.
    m.modules = vec![Module::new(dom0, dom0_cmdline)];
    m
}

/// The bench guest's standalone benchmarks (`scenario=bench-standalone`: the null call, the
/// page-table, event and grant paths and the rest of the peer set) as Xen's dom0, with `iters`
/// samples each: the Xen side of `cargo xtask bench --peer xen`.
pub fn bench_machine(xen: &Path, testguest: &Path, iters: u64) -> Machine {
    machine(xen, testguest, &format!("scenario=bench-standalone iters={iters}"))
}

/// Added when Debian's Linux is dom0: with SMEP/SMAP on, Xen 4.17 under QEMU 7.2's TCG
/// crashes that kernel in its first milliseconds (a #PF Xen takes writing a bounce frame onto
/// the kernel's stack, see docs/linux-reference.md); our own test guest does not need this.
pub const LINUX_WORKAROUND: &str = "smap=0 smep=0";

/// Debian's Linux as Xen's dom0 with `guest`'s initramfs as its ramdisk (Xen's second boot
/// module) and 256 MiB: the reference run of [`crate::linux`]'s artefacts.
pub fn linux_dom0_machine(xen: &Path, guest: &crate::linux::LinuxGuest) -> Machine {
    let mut m = machine(xen, &guest.kernel.vmlinux, &guest.cmdline);
    m.hv_cmdline = format!("{} {LINUX_WORKAROUND}", CMDLINE.replace("dom0_mem=64M", "dom0_mem=256M"));
    m.modules.push(Module::new(&guest.initramfs, ""));
    m
}

/// How Xen says the machine is over, if `line` is such a line. Xen halts the CPU after each
/// of these and leaves QEMU running.
pub fn outcome_of_line(line: &str) -> Option<Outcome> {
    if line.contains("Hardware Dom0 halted: halting machine") {
        Some(Outcome::Poweroff)
    } else if line.contains("Hardware Dom0 crashed") || line.contains("Hardware Dom0 shutdown") {
        // "crashed: 'noreboot' set - not rebooting." / "shutdown: rebooting machine" /
        // "shutdown (unknown reason N)": anything but a poweroff.
        Some(Outcome::Dom0Crash)
    } else if line.contains("Panic on CPU") || line.contains("Manual reset required") {
        Some(Outcome::HypervisorFault)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_how_xen_ends() {
        assert_eq!(outcome_of_line("(XEN) Hardware Dom0 halted: halting machine"), Some(Outcome::Poweroff));
        assert_eq!(
            outcome_of_line("(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting."),
            Some(Outcome::Dom0Crash)
        );
        assert_eq!(
            outcome_of_line("(XEN) Hardware Dom0 shutdown: rebooting machine"),
            Some(Outcome::Dom0Crash)
        );
        assert_eq!(outcome_of_line("(XEN) Panic on CPU 0:"), Some(Outcome::HypervisorFault));
        assert_eq!(outcome_of_line("(XEN) Freed 656kB init memory"), None);
        assert_eq!(outcome_of_line("TEST trap-pf PASS"), None);
    }

    #[test]
    fn dom0_command_line_follows_the_image_name() {
        let m = machine(Path::new("/x/xen"), Path::new("/k/testguest"), "scenario=trap-pf");
        let args: Vec<String> = m.command().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let at = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(at("-kernel"), "/x/xen");
        assert_eq!(at("-append"), CMDLINE);
        assert_eq!(at("-initrd"), "/k/testguest scenario=trap-pf");
        assert_eq!(at("-cpu"), "max");
    }
}
