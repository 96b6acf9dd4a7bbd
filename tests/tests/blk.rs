//! The block path end to end: dom0 drives a virtio-blk disk (PCI, DMA, pirq interrupts) and
//! serves it to a domU through blkback/blkfront. Where the domU writes, the image file is
//! checked on the host after QEMU has exited; hostile frontends, a domain dying with requests
//! in flight and a domU reaching for devices are each their own boot.

use std::path::Path;
use tests::{
    boot, check_pattern, field, field_i64, guest_value, kernels, kv, read_words, Machine, Outcome, Run,
    RunExt,
};
use xtask::disk::{self, SECTOR};

const MIB: u64 = 1 << 20;

fn scratch(tag: &str, bytes: u64) -> std::path::PathBuf {
    disk::scratch_image(tag, bytes).unwrap_or_else(|e| panic!("scratch image: {e}"))
}

/// dom0 plus the test guest (`tg`) running `scenario`, with `image` served to it.
fn machine(scenario: &str, image: &Path) -> Machine {
    Machine::scenario(&kernels(), scenario).with_vbd(image, "tg")
}

/// dom0's line for domain `d`'s vbd going away (its figures as `key=value`).
fn vbd_line(run: &Run, d: u16) -> &str {
    let prefix = format!("dom0: d{d}/vbd");
    run.log
        .iter()
        .find(|l| l.contains(&prefix) && l.contains(": disconnected (virtio-blk "))
        .unwrap_or_else(|| panic!("no vbd of d{d} disconnected:\n{}", run.text()))
}

/// Every vbd's ring and persistent grants were unmapped without a failure; returns how many
/// vbds went away.
fn clean_teardown(run: &Run) -> usize {
    let lines: Vec<&String> = run.lines_with(": disconnected (virtio-blk ").collect();
    assert!(!lines.is_empty(), "no vbd disconnected:\n{}", run.text());
    for l in &lines {
        let got: (u64, u64) = (field(run, l, "ring_unmapped"), field(run, l, "grant_unmap_failures"));
        assert_eq!(got, (1, 0), "{l}");
    }
    lines.len()
}

/// dom0's figures for domain `d`'s vbd are the ones the guest counted for `scenario`.
fn dom0_agrees(run: &Run, d: u16, scenario: &str, keys: &[&str]) {
    let line = vbd_line(run, d);
    for key in keys {
        assert_eq!(field_i64(run, line, key), guest_value(run, d, scenario, key), "{key}: {line}");
    }
}

#[test]
fn dom0_drives_the_disk_with_interrupts() {
    let img = scratch("dom0", 16 * MIB);
    let mut m = Machine::scenario(&kernels(), "none");
    m.modules.truncate(1);
    m.disks.push(img.clone());
    let m = m.dom0_options("blktest=1");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: blk 00:")
        .expect_line("-> pirq")
        .expect_line("TEST blk.dom0 PASS")
        .expect_no_line("polling instead");
    // The self-test wrote 64 KiB at the last MiB; check it landed.
    let data = std::fs::read(&img).unwrap();
    let sector = data.len() as u64 / SECTOR - 2048;
    let at = (sector * SECTOR) as usize;
    for i in 0..64 * 1024usize {
        let want = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ 0x5a;
        assert_eq!(data[at + i], want, "byte {i} of dom0's self-test at sector {sector}");
    }
}

#[test]
fn domu_pattern_over_16_mib_lands_in_the_image() {
    let img = scratch("pattern", 64 * MIB);
    let seed = 0x5eed_u64;
    let run = boot(&machine(&format!("blk-pattern seed={seed}"), &img));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST blk-pattern PASS").expect_no_line(" FAIL ");
    assert_eq!(clean_teardown(&run), 1);
    // dom0 served exactly what the guest asked for, and refused nothing.
    dom0_agrees(&run, 1, "blk-pattern", &["requests", "sectors_written", "sectors_read", "flushes"]);
    let line = vbd_line(&run, 1);
    assert_eq!((field(&run, line, "errors"), field(&run, line, "unsupported")), (0, 0), "{line}");
    let (data, chunks) = check_pattern(&run, &img, seed);
    // Somewhere nobody wrote stays zero.
    let untouched =
        (0..data.len() as u64 / SECTOR / 512).map(|k| k * 512).find(|c| !chunks.contains(c)).unwrap();
    assert!(read_words(&data, untouched).all(|w| w == 0));
}

#[test]
fn domu_reads_a_prepared_image() {
    let img = scratch("image", 0);
    disk::prepared_image(&img, 8 * MIB / SECTOR).unwrap();
    let run = boot(&machine("blk-image", &img));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST blk-image PASS").expect_no_line(" FAIL ");
    // The guest checked every sector dom0 read for it: the image's first 4096 and its last 64.
    dom0_agrees(&run, 1, "blk-image", &["sectors_read"]);
    assert_eq!(guest_value(&run, 1, "blk-image", "checked"), 4096 + 64);
    assert_eq!(
        guest_value(&run, 1, "blk-image", "checked"),
        guest_value(&run, 1, "blk-image", "sectors_read")
    );
}

#[test]
fn hostile_frontend_gets_errors_and_the_backend_survives() {
    let img = scratch("hostile", 16 * MIB);
    let run = boot(&machine("blk-hostile", &img));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST blk-hostile PASS")
        .expect_line("frontend broke the ring")
        .expect_no_line(" FAIL ")
        .expect_order("frontend broke the ring", "Domain 0 (dom0) shut down: poweroff");
    assert_eq!(clean_teardown(&run), 1);
    // dom0 counted every request and every refusal the guest saw.
    dom0_agrees(&run, 1, "blk-hostile", &["requests", "errors", "unsupported"]);
}

#[test]
fn indirect_requests_land_in_the_image_and_hostile_ones_fail_alone() {
    let img = scratch("indirect", 64 * MIB);
    let seed = 0x1d1_u64;
    let run = boot(&machine(&format!("blk-indirect seed={seed}"), &img));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST blk-indirect PASS").expect_no_line(" FAIL ");
    assert_eq!(clean_teardown(&run), 1);
    // The backend offered indirect segments and served the domU's as such.
    let offered = kv(&run, "max-indirect-segments").expect("dom0's connect line");
    assert!(offered > 11, "max-indirect-segments={offered}");
    dom0_agrees(&run, 1, "blk-indirect", &["indirect", "errors"]);
    let served: u64 = field(&run, vbd_line(&run, 1), "indirect");
    assert!(served >= 4 + 8, "{served} indirect requests served");
    // What the domU wrote with indirect requests is in the image, sector by sector.
    let writes: Vec<(u64, u64)> = run
        .lines_with("blk-indirect: seed")
        .map(|l| {
            let w: Vec<u64> =
                l[l.find(" write ").unwrap() + 7..].split_whitespace().map(|x| x.parse().unwrap()).collect();
            (w[0], w[1])
        })
        .collect();
    assert_eq!(writes.len(), 2, "{}", run.text());
    let data = std::fs::read(&img).unwrap();
    for (start, count) in writes {
        assert!(count > 11 * 8 || start % 1024 == 5, "a request of more than 11 pages, or the partial one");
        for s in start..start + count {
            for (i, w) in read_words(&data, s).enumerate() {
                assert_eq!(w, disk::pattern_word(seed, s, i as u64), "sector {s} word {i} in the image");
            }
        }
        // The sectors just before and after stay as they were (zero).
        assert!(
            read_words(&data, start - 1).all(|w| w == 0) && read_words(&data, start + count).all(|w| w == 0)
        );
    }
}

#[test]
fn domain_destroyed_with_requests_in_flight_is_released() {
    let img = scratch("destroy", 64 * MIB);
    let run = boot(&machine("blk-destroy", &img));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST blk-destroy RUNNING crashing with")
        .expect_line("Domain 1 (tg) shut down: crash")
        .expect_line("domain gone with")
        .expect_line("domain fully released")
        .expect_no_line("still holds")
        .expect_order("Domain 1 destroyed:", "domain fully released");
    // The domain was destroyed while dom0 still mapped its ring and persistent grants (the
    // hypervisor counts those frames as still referenced); "fully released" is dom0 asking the
    // hypervisor afterwards (DOMAIN_FRAMES → ESRCH: no frame of the domain is left).
    let destroyed = tests::destroyed_line(&run, 1);
    let held: u64 = field(&run, destroyed, "referenced");
    assert!(held > 0, "dom0 held none of the domain's frames when it was destroyed: {destroyed}");
    assert_eq!(clean_teardown(&run), 1);
}

#[test]
fn a_domu_cannot_reach_ports_device_memory_or_interrupts() {
    let img = scratch("noio", MIB);
    let run = boot(&machine("blk-noio", &img));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST blk-noio PASS")
        .expect_line("TEST blk-noio-port RUNNING")
        .expect_line("d1v0 crashed: unhandled #GP")
        .expect_no_line(" FAIL ");
}

#[test]
fn demo_domu_uses_its_disk() {
    let img = scratch("demo", 64 * MIB);
    let m = Machine::standard(&kernels()).with_vbd(&img, "domU").dom0_options("steps=0");
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("virtual disk vbd/51712: 131072 sectors")
        .expect_line("wrote, flushed and read back sector 131071: ok")
        .expect_line("virtual disk disconnected");
    let data = std::fs::read(&img).unwrap();
    assert!(data[data.len() - 512..].starts_with(b"microvisor domU was here\n"));
}

#[test]
fn disk_benchmarks_report_dom0_and_domu_figures() {
    let run = boot(&Machine::bench(&kernels(), 2_000));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST blk-bench PASS");
    let results = xtask::bench::parse(&run.log, "wall");
    let median = |name: &str| {
        let r = results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no BENCH {name}:\n{}", run.text()));
        assert!(r.n >= 4 && r.min > 0 && r.min <= r.median && r.median <= r.p99, "{name}: {r:?}");
        r.median
    };
    for kind in ["seqread", "seqwrite", "randread4k"] {
        median(&format!("blk.{kind}.dom0"));
        median(&format!("blk.{kind}.domU"));
    }
    // Timings are not pass/fail; the ratios are printed for the record.
    print!("{}", disk::blk_ratios(&results));
}

#[test]
fn a_hostile_frontend_does_not_stop_another_domains_disk() {
    let hostile_img = scratch("hostile2", 16 * MIB);
    let good_img = scratch("neighbour", 64 * MIB);
    let seed = 0xbeef_u64;
    let k = kernels();
    let mut m = machine("blk-hostile", &hostile_img);
    m.modules.push(tests::pattern_neighbour(&k, seed, ""));
    let run = boot(&m.with_vbd(&good_img, "tg2"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST blk-hostile PASS")
        .expect_line("TEST blk-pattern PASS")
        .expect_no_line(" FAIL ")
        // The neighbour is still served after the hostile ring was closed.
        .expect_order("frontend broke the ring", "TEST blk-pattern PASS");
    // Both rings are torn down cleanly, dom0 served the neighbour what it asked for, and the
    // neighbour's data really is on its disk.
    assert_eq!(clean_teardown(&run), 2);
    dom0_agrees(&run, 1, "blk-hostile", &["requests", "errors", "unsupported"]);
    dom0_agrees(&run, 2, "blk-pattern", &["requests", "sectors_written", "sectors_read", "flushes"]);
    check_pattern(&run, &good_img, seed);
}

/// Ring fuzzing on the real machine: a frontend rewrites its rings (the vbd's and the
/// vrng's) at full speed — requests of every shape with its own and made-up grant
/// references, requests rewritten after publication, producer and event indexes, bytes
/// anywhere — and notifies dom0 after every change. dom0 survives, tears both rings down
/// cleanly, and a neighbour started at the same moment is served throughout; its disk's bytes
/// are checked in the image.
#[test]
fn a_frontend_scribbling_over_its_rings_does_not_stop_another_domains_disk() {
    let hostile_img = scratch("scribble", 16 * MIB);
    let good_img = scratch("scribble-neighbour", 64 * MIB);
    let seed = 0x5c71_u64;
    let k = kernels();
    let mut m = machine("ring-scribble until=2", &hostile_img);
    m.modules.push(tests::pattern_neighbour(&k, seed, "after=1 announce-done"));
    let run = boot(&m.with_vbd(&good_img, "tg2"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST ring-scribble PASS")
        .expect_line("TEST blk-pattern PASS")
        .expect_no_line(" FAIL ")
        .expect_no_line("PANIC")
        .expect_line("ring-scribble: scribbling over the vbd ring and the vrng ring")
        // The neighbour ran while the rings were being scribbled over.
        .expect_order("ring-scribble: scribbling over", "TEST blk-pattern PASS")
        .expect_order("TEST blk-pattern PASS", "ring-scribble: the neighbour is done")
        .expect_no_line("ring_unmapped=0");
    assert_eq!(clean_teardown(&run), 2);
    dom0_agrees(&run, 2, "blk-pattern", &["requests", "sectors_written", "sectors_read", "flushes"]);
    run.expect_line("dom0: d1/vrng0: disconnected (");
    check_pattern(&run, &good_img, seed);
}
