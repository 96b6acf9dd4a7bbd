//! PV memory management from the guest side: a hostile domU's page-table attacks get Xen's
//! error codes (and nothing else happens), a guest kernel runs code in user mode and gets its
//! system call back, and destroying a domU returns every frame it held.

use tests::{boot, field, kernels, Machine, Outcome, Run, RunExt};

/// Every case of the `mm-hostile` scenario with the result Xen gives (`-errno` or 0).
const CASES: &[(&str, i64)] = &[
    ("control-own-page-rw", 0),
    ("control-unmap", 0),
    ("control-own-l4-ro", 0),
    ("control-unmap-l4", 0),
    // A writable mapping of one of our page tables: EBUSY.
    ("pt-own-l4-rw", -16),
    ("pt-own-l1-rw", -16),
    ("pt-own-l1-ro-to-rw", -16),
    // XSA-182: a recursive L4 entry made writable, directly or as a flag-only change.
    ("xsa182-l4-linear-rw", -22),
    ("control-l4-linear-ro", 0),
    ("xsa182-l4-linear-ro-to-rw", -22),
    ("control-l4-linear-clear", 0),
    // XSA-148: superpages.
    ("pse-l2", -22),
    ("pse-l2-ro", -22),
    ("pse-l3", -22),
    // Hypervisor frames: the image, the M2P's page table and its data.
    ("hv-image-ro", -16),
    ("hv-image-rw", -16),
    ("m2p-l3-rw", -16),
    ("m2p-l3-ro", -16),
    ("m2p-data-rw", -16),
    // Frames Xen lends the domain (shared_info, grant table) are its to map.
    ("control-lent-frame-rw", 0),
    // Another domain's frame.
    ("foreign-ro", -16),
    ("foreign-rw", -16),
    ("machphys-foreign", -22),
    ("machphys-hv-image", -22),
    // Beyond RAM: device memory a domU may not map.
    ("beyond-ram", -1),
    ("beyond-ram-rw", -1),
    // Pinning.
    ("pin-writable", -22),
    ("control-pin-l1", 0),
    ("control-unpin", 0),
    ("unpin-twice", -22),
    // Non-canonical INVLPG: Xen ignores it (`paging_invlpg` returns early); microvisor refuses
    // it with -EINVAL, as the issue that asked for this case requires an error.
    ("invlpg-noncanonical-local", -22),
    ("invlpg-noncanonical-all", -22),
    // count = 2^32 - 1 with a three-request buffer ending at an unmapped page.
    ("count-max-short-buffer", -14),
    ("count-max-short-buffer-done", 3),
    // Every frame below maximum_ram_page that is not the domain's.
    ("sweep-accepted", 0),
    ("sweep-other-errors", 0),
];

/// The test guest's `HOSTILE <tag> -> <result> ...` line for one case.
fn case_line<'a>(run: &'a Run, tag: &str) -> &'a str {
    let prefix = format!("HOSTILE {tag} -> ");
    run.log
        .iter()
        .find(|l| l.contains(&prefix))
        .unwrap_or_else(|| panic!("no result line for {tag}:\n{}", run.text()))
}

#[test]
fn hostile_page_table_updates_get_xen_error_codes() {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, "mm-hostile"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_no_line("crashed")
        .expect_order("Domain 1 (tg) shut down: poweroff", "Domain 0 (dom0) shut down: poweroff");
    for &(tag, want) in CASES {
        let line = case_line(&run, tag);
        let got: i64 = line
            .split(" -> ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unparsable result line {line:?}"));
        assert_eq!(got, want, "{tag}: line {line:?}\n{}", run.text());
        assert!(line.ends_with(" ok"), "{tag}: line {line:?}");
    }
    run.expect_line("TEST mm-hostile PASS");
}

#[test]
fn guest_kernel_round_trips_through_user_mode() {
    let k = kernels();
    boot(&Machine::scenario(&k, "user-mode"))
        .expect_outcome(Outcome::Poweroff)
        .expect_line("user-mode: round 2: syscall 7 arg 0x5ca1ab1e from rip 0x400020 cs 0xe033")
        .expect_line("TEST user-mode PASS")
        .expect_no_line("crashed");
}

/// The scenario machine with `destroy-check=1` added to dom0's command line.
fn destroy_machine(k: &tests::Kernels, scenario: &str) -> Machine {
    let mut m = Machine::scenario(k, scenario);
    let dom0 = &mut m.modules[0];
    let sep = if dom0.args.contains(" -- ") { " " } else { " -- " };
    dom0.args = format!("{}{sep}destroy-check=1", dom0.args);
    m
}

#[test]
fn destroying_a_domain_returns_every_frame() {
    let k = kernels();
    // A domU that shuts down holding a pinned tree, a user base, a linear entry, an alias and
    // ballooned-out pages: its 8192 - 100 frames, shared_info and one grant frame come back.
    let run = boot(&destroy_machine(&k, "mm-leak"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST mm-leak PASS")
        .expect_no_line("TEST destroy FAIL");
    let released = destroy_figures(&run, 8192 - 100);
    // The hypervisor released all of it at once: nothing stayed referenced.
    let line = tests::destroyed_line(&run, 1);
    assert_eq!((field(&run, line, "released"), field(&run, line, "referenced")), (released, 0), "{line}");
}

/// dom0's `destroy-check` figures for d1 (sampled just before the destruction: `frames` besides
/// shared_info, and one grant frame) and the free count rising by exactly what the domain
/// held; returns that.
fn destroy_figures(run: &Run, frames: u64) -> u64 {
    let check = tests::line(run, "TEST destroy PASS");
    let got: (u64, u64) = (field(run, check, "d1_frames"), field(run, check, "d1_grant_frames"));
    assert_eq!(got, (frames, 1), "{check}");
    let held = frames + 1 + 1;
    let free: (u64, u64) = (field(run, check, "free_before"), field(run, check, "free_after"));
    assert_eq!(free.1 - free.0, held, "{check}");
    held
}

#[test]
fn destroying_a_domain_after_hostile_updates_returns_every_frame() {
    let k = kernels();
    let run = boot(&destroy_machine(&k, "mm-hostile"));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("TEST destroy FAIL");
    destroy_figures(&run, 8192);
}

/// Issue 9, finding 4 (XSA-45 class): a domU pins and unpins an L4 over thousands of L1s in
/// multicalls of `mmuext_op`s while dom0 serves another domU's disk. Validation is preemptible,
/// so the disk traffic completes during the storm and its bytes land in the image (checked
/// here). The storm lasts at least 10 s of the machine's time (the disk test takes about 3 s
/// beside it), so that the order asserted does not depend on how fast either runs.
#[test]
fn dom0_keeps_serving_a_disk_during_a_pin_storm() {
    let k = kernels();
    let img = xtask::disk::scratch_image("storm-neighbour", 64 << 20).unwrap();
    let seed = 0x5707_u64;
    let mut m = Machine::scenario(&k, "pin-storm l1s=2048 pairs=1 calls=4 rounds=2 seconds=10");
    // The domU reads the hypervisor's longest page-table operation (a machine-wide figure).
    m.hv_cmdline = "arch_debug=domu".into();
    m.modules.push(tests::Module::new(
        &k.testguest,
        &format!("name=tg2 mem=32M -- scenario=blk-pattern seed={seed}"),
    ));
    let run = boot(&m.with_vbd(&img, "tg2"));
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST pin-storm PASS")
        .expect_line("TEST blk-pattern PASS")
        .expect_no_line(" FAIL ")
        .expect_order("pin-storm: started", "TEST blk-pattern PASS")
        .expect_order("TEST blk-pattern PASS", "TEST pin-storm PASS");
    // The figures are published (timing is asserted in benchmarks, not here).
    assert!(run.has("pin-storm: longest_op="), "{}", run.text());
    // The neighbour's writes are really on its disk.
    tests::check_pattern(&run, &img, seed);
}

/// Issue 12 item 1: a boot module marked `ramdisk=<name>` becomes that domain's Xen ramdisk
/// (`start_info.mod_start`/`mod_len`); the guest hashes what it finds there and the host
/// compares with the file it gave QEMU.
#[test]
fn a_ramdisk_module_reaches_its_domain() {
    let k = kernels();
    let dir = xtask::workspace_root().join("target/disks");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ramdisk-test.bin");
    // Not a multiple of the page size, so the length is checked too.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut m = Machine::scenario(&k, "ramdisk");
    m.modules.push(tests::Module::new(&path, "ramdisk=tg"));
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST ramdisk PASS").expect_no_line(" FAIL ");
    let fnv = data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    run.expect_line(&format!("ramdisk: len={} fnv={fnv:#018x}", data.len()));
}

/// Issue 11 item 6: the `memory_op` queries and `XENVER_get_features` a PV kernel makes at boot
/// return Xen's results for a PV domain (the scenario is standalone, so it runs under Xen too).
#[test]
fn memory_op_queries_give_xens_results() {
    let run = boot(&Machine::scenario(&kernels(), "memop"));
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST memop PASS");
    let value = |key: &str| -> String {
        let needle = format!(" {key}=");
        let line = run.lines_with(&needle).next().unwrap_or_else(|| panic!("{key}:\n{}", run.text())).clone();
        line.split(&needle).nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let nr_pages: i64 = value("nr_pages").parse().unwrap();
    // tot_pages is what the domain was built with; max_pages at least that.
    assert_eq!(value("current_reservation").parse::<i64>().unwrap(), nr_pages);
    assert!(value("maximum_reservation").parse::<i64>().unwrap() >= nr_pages);
    // shared_info.arch.max_pfn, which this guest never writes: (0 ?: 1) - 1.
    assert_eq!(value("maximum_gpfn"), "0");
    // A domain that does not exist: ESRCH before any permission check.
    assert_eq!(value("current_reservation_other"), "-3");
    assert_eq!(value("maximum_ram_page_positive"), "true");
    // The read-only M2P at Xen's RO_MPT_VIRT_START (v_end follows the machine's size).
    assert_eq!(value("machphys_mapping"), "0");
    assert_eq!(value("v_start"), "0xffff800000000000");
    assert_eq!(value("machphys_mfn_list"), "0");
    assert_eq!(value("nr_extents_positive"), "true");
    // XENFEAT_mmu_pt_update_preserve_ad (5) and gnttab_map_avail_bits (7), no dom0 (11).
    assert_eq!(value("get_features"), "0");
    let submap = u32::from_str_radix(value("submap0").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(submap & (1 << 5 | 1 << 7 | 1 << 11), 1 << 5 | 1 << 7, "{submap:#x}");
}
