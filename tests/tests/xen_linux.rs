//! Linux artefacts from Debian's packages, checked on real inputs: the cloud kernel's vmlinux
//! extracted from its bzImage (a PV kernel with Xen's ELF notes), its modules' dependencies,
//! an initramfs with busybox, the xen-blkfront/xen-netfront modules and our init, and that
//! initramfs booting Debian's kernel as Xen 4.17's dom0 in our QEMU up to a clean poweroff.
//! Each test skips loudly where apt cannot fetch the packages.

use std::time::Duration;
use tests::{Outcome, RunExt};
use xtask::linux::{self, Role};

fn kernel_or_skip(test: &str) -> Option<linux::Kernel> {
    match linux::kernel() {
        Ok(k) => Some(k),
        Err(u) => {
            xtask::debian::skip(test, "Debian's cloud kernel", &u);
            None
        }
    }
}

#[test]
fn debian_vmlinux_is_a_pv_kernel_with_xen_notes() {
    let Some(k) = kernel_or_skip("xen_linux::debian_vmlinux_is_a_pv_kernel_with_xen_notes") else { return };
    let elf = std::fs::read(&k.vmlinux).unwrap();
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "not an ELF64 LE file: {}", k.vmlinux.display());
    let segments = xtask::kernels::elf_load_segments(&elf).expect("program headers");
    assert!(
        segments.iter().any(|s| s.vaddr >= 0xffff_ffff_8000_0000),
        "no segment in the kernel's top 2 GiB"
    );
    // The notes Xen's domain builder reads: the loader name and the guest OS.
    let has = |needle: &[u8]| elf.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"xen-3.0\0") && has(b"linux\0"), "no Xen ELF notes in {}", k.vmlinux.display());
    // Extraction is deterministic: doing it again from the package gives the same bytes.
    let bz = std::fs::read(k.vmlinux.with_file_name(format!("vmlinuz-{}", k.release))).unwrap();
    assert_eq!(linux::extract_vmlinux(&bz).unwrap(), elf);
}

#[test]
fn module_dependencies_come_from_modinfo() {
    let Some(k) = kernel_or_skip("xen_linux::module_dependencies_come_from_modinfo") else { return };
    let order = linux::modules_in_load_order(&k.modules, &["virtio_blk", "xen-blkfront"]).unwrap();
    let names: Vec<String> = order.iter().map(|p| linux::module_name(&p.to_string_lossy())).collect();
    let at =
        |n: &str| names.iter().position(|m| m == n).unwrap_or_else(|| panic!("{n} missing from {names:?}"));
    // virtio_blk needs virtio and virtio_ring, and virtio needs virtio_ring.
    assert!(at("virtio_ring") < at("virtio") && at("virtio") < at("virtio_blk"), "{names:?}");
    assert!(names.contains(&"xen_blkfront".to_string()));
    assert_eq!(names.iter().filter(|n| *n == "virtio_ring").count(), 1, "{names:?}");
    assert!(linux::modules_in_load_order(&k.modules, &["no_such_module"]).is_err());
}

#[test]
fn domu_initramfs_holds_busybox_the_frontends_and_init() {
    let g = match linux::prepare("domu-check", Role::DomU { shell: false }) {
        Ok(g) => g,
        Err(u) => return xtask::debian::skip("xen_linux::domu_initramfs", "the Linux domU artefacts", &u),
    };
    let entries = linux::cpio_entries(&std::fs::read(&g.initramfs).unwrap()).unwrap();
    let mut names = Vec::new();
    let mut init = String::new();
    for (name, _, _, data) in entries {
        if name == "init" {
            init = String::from_utf8(data.clone()).unwrap();
        }
        if name.ends_with(".ko") || name == "bin/busybox" {
            assert!(data.starts_with(b"\x7fELF"), "{name} is not an ELF file");
        }
        names.push(name);
    }
    for want in
        ["bin/busybox", "dev/console", "init", "lib/modules/xen_blkfront.ko", "lib/modules/xen_netfront.ko"]
    {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(init.contains("mount -t ext4 /dev/xvda /mnt") && init.contains("poweroff -f"), "{init}");
    // The disk holds the known file.
    let disk = g.disk.expect("a domU has a disk");
    assert_eq!(
        linux::read_ext_file(&disk, &format!("/{}", linux::KNOWN_FILE)).unwrap(),
        linux::KNOWN_TEXT.as_bytes()
    );
}

/// The reference run: Debian's kernel as Xen 4.17's dom0 reaches our init, loads both
/// frontend modules with busybox's insmod, prints a file and powers off with
/// SCHEDOP_shutdown.
#[test]
fn debian_linux_runs_our_initramfs_as_xen_dom0() {
    let xen = match xtask::xen::hypervisor() {
        Ok(x) => x,
        Err(u) => return xtask::debian::skip("xen_linux::debian_linux_as_xen_dom0", "Xen 4.17", &u),
    };
    let g = match linux::prepare("xen-dom0", Role::XenDom0) {
        Ok(g) => g,
        Err(u) => {
            return xtask::debian::skip("xen_linux::debian_linux_as_xen_dom0", "the Linux artefacts", &u)
        }
    };
    let run = xtask::xen::linux_dom0_machine(&xen.image, &g)
        .run(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("Linux version")
        .expect_order("Run /init as init process", "LINUXINIT start")
        .expect_line("LINUXINIT insmod xen_blkfront.ko ok")
        .expect_line("LINUXINIT insmod xen_netfront.ko ok")
        .expect_line(&format!("LINUXINIT cat /etc/{}: {}", linux::KNOWN_FILE, linux::KNOWN_TEXT.trim_end()))
        .expect_order("LINUXINIT poweroff", "Hardware Dom0 halted")
        .expect_no_line("FAILED");
}
