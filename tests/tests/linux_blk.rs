//! Linux's xen-blkfront against dom0's blkback with everything blkback offers in use: Debian's
//! unmodified cloud kernel negotiates indirect descriptors (`feature-max-indirect-segments`),
//! persistent grants and, asked for with the module's `max_ring_page_order=2`, a four-page ring
//! (`max-ring-page-order`); it then mounts its disk, reads the host's file, writes one the host
//! reads back out of the image, and powers off (issue 12 item 2). Skips loudly where apt cannot
//! fetch the packages.

use tests::linux_domu::{self, DEADLINE};
use tests::{kv, Outcome, RunExt};
use xtask::linux::Role;

#[test]
fn linux_blkfront_negotiates_indirect_segments_and_a_multi_page_ring() {
    let test = "linux_blk::linux_blkfront_negotiates_indirect_segments_and_a_multi_page_ring";
    let Some(mut g) = linux_domu::guest_or_skip(test, "blk-features", Role::DomU { shell: false }) else {
        return;
    };
    // Linux's blkfront uses a one-page ring unless its module parameter asks for more.
    g.cmdline += " xen_blkfront.max_ring_page_order=2";
    let run = linux_domu::machine(&g, "").run(DEADLINE).unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    let markers = [
        "LINUXINIT start",
        "indirect descriptors: enabled;",
        "LINUXINIT insmod xen_blkfront.ko ok",
        "LINUXINIT mounted /dev/xvda",
    ];
    run.expect_in_order(&markers);
    linux_domu::expect_disk_round_trip(&run, &g);
    run.expect_order("LINUXINIT unmounted /dev/xvda", "Domain 1 (linux) shut down: poweroff")
        .expect_outcome(Outcome::Poweroff)
        .expect_line("persistent grants: enabled;")
        .expect_no_line("FAILED")
        .expect_no_line("d1v0 crashed");
    // dom0's side of what was negotiated: four ring pages, 128 slots, indirect segments.
    assert_eq!(kv(&run, "ring-pages"), Some(4), "{}", run.text());
    assert_eq!(kv(&run, "ring-slots"), Some(128));
    assert!(kv(&run, "max-indirect-segments").is_some_and(|n| n > 11));
}
