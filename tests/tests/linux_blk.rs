//! Linux's xen-blkfront against dom0's blkback with everything blkback offers in use: Debian's
//! unmodified cloud kernel negotiates indirect descriptors (`feature-max-indirect-segments`),
//! persistent grants and, asked for with the module's `max_ring_page_order=2`, a four-page ring
//! (`max-ring-page-order`); it then mounts its disk, reads the host's file, writes one the host
//! reads back out of the image, and powers off (issue 12 item 2). Skips loudly where apt cannot
//! fetch the packages.

use std::time::Duration;
use tests::{kernels, kv, Machine, Module, Outcome, RunExt};
use xtask::linux::{self, Role};

/// Boot to poweroff takes 10-40 s under TCG on the shared machine; the margin is for load.
const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn linux_blkfront_negotiates_indirect_segments_and_a_multi_page_ring() {
    let mut g = match linux::prepare("blk-features", Role::DomU { shell: false }) {
        Ok(g) => g,
        Err(u) => {
            return xtask::debian::skip(
                "linux_blk::linux_blkfront_negotiates_indirect_segments_and_a_multi_page_ring",
                "the Linux domU artefacts",
                &u,
            )
        }
    };
    // Linux's blkfront uses a one-page ring unless its module parameter asks for more.
    g.cmdline += " xen_blkfront.max_ring_page_order=2";
    let disk = g.disk.clone().expect("a domU has a disk");
    let k = kernels();
    let mut m = Machine::with_hypervisor(&k.microvisor, "");
    m.modules = vec![Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0")];
    let run = m
        .with_linux_domu(&g, "linux", "256M")
        .run(DEADLINE)
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    let read = format!("LINUXINIT read {}: {}", linux::KNOWN_FILE, linux::KNOWN_TEXT.trim_end());
    let wrote = format!("LINUXINIT wrote {}", linux::NEW_FILE);
    let markers = [
        "LINUXINIT start",
        "indirect descriptors: enabled;",
        "LINUXINIT insmod xen_blkfront.ko ok",
        "LINUXINIT mounted /dev/xvda",
        &read,
        &wrote,
        "LINUXINIT unmounted /dev/xvda",
        "Domain 1 (linux) shut down: poweroff",
    ];
    for w in markers.windows(2) {
        run.expect_order(w[0], w[1]);
    }
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("persistent grants: enabled;")
        .expect_no_line("FAILED")
        .expect_no_line("d1v0 crashed");
    // dom0's side of what was negotiated: four ring pages, 128 slots, indirect segments.
    assert_eq!(kv(&run, "ring-pages"), Some(4), "{}", run.text());
    assert_eq!(kv(&run, "ring-slots"), Some(128));
    assert!(kv(&run, "max-indirect-segments").is_some_and(|n| n > 11));
    // What the guest claims, checked on the host: the file is in the image.
    let back = linux::read_ext_file(&disk, &format!("/{}", linux::NEW_FILE))
        .unwrap_or_else(|e| panic!("reading {} back: {e}\n{}", linux::NEW_FILE, run.text()));
    assert_eq!(back, linux::WRITTEN.as_bytes());
}
