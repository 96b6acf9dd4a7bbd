//! The balloon driver against the hypervisor's accounting: ballooning down by N pages takes
//! exactly N frames from the domain and frees them (the machine-wide count to within what dom0
//! moves meanwhile), ballooning back up reverses both; with
//! the target set by dom0 through xenstore (`mem-set=`) as well as by a boot option.

use tests::{boot, field_i64, kernels, Machine, Outcome, Run, RunExt};

/// The fields (`key=value`) of the first line that contains `BALLOON <dir> `.
fn figures<'a>(run: &'a Run, dir: &str) -> &'a str {
    tests::line(run, &format!("BALLOON {dir} "))
}

/// The machine-wide free-frame count follows our domain's to within what dom0 and the
/// hypervisor heap may move meanwhile (the guest's `OTHERS_DRIFT`); the domain's own count and
/// reservation are exact.
fn assert_free_moved(got: i64, want: i64, log: &str) {
    assert!((got - want).abs() <= 64, "free frames moved by {got}, want {want} (±64)\n{log}");
}

fn balloon_down_and_up(target: u64, want_pages: i64) {
    let k = kernels();
    // The domU reads the hypervisor's free-frame count, dom0's by default.
    let mut m = Machine::scenario(&k, &format!("balloon balloon={target}"));
    m.hv_cmdline = "arch_debug=domu".into();
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff).expect_no_line("crashed");
    let down = figures(&run, "down");
    let up = figures(&run, "up");
    assert_eq!(field_i64(&run, down, "pages"), want_pages, "{}", run.text());
    assert_free_moved(field_i64(&run, down, "free_delta"), want_pages, &run.text());
    assert_eq!(field_i64(&run, down, "domain_delta"), -want_pages, "{}", run.text());
    assert_eq!(field_i64(&run, up, "pages"), want_pages, "{}", run.text());
    assert_free_moved(field_i64(&run, up, "free_delta"), -want_pages, &run.text());
    assert_eq!(field_i64(&run, up, "domain_delta"), want_pages, "{}", run.text());
    // The domain's reservation follows: 8192 pages at boot.
    assert_eq!(field_i64(&run, down, "reservation"), 8192 - want_pages, "{}", run.text());
    assert_eq!(field_i64(&run, up, "reservation"), 8192, "{}", run.text());
    run.expect_line("TEST balloon PASS");
}

#[test]
fn ballooning_down_1024_pages_and_back_is_exact() {
    balloon_down_and_up(7168, 1024);
}

#[test]
fn ballooning_below_the_floor_stops_at_the_floor() {
    // The driver keeps 1024 pages whatever the target says.
    balloon_down_and_up(0, 8192 - 1024);
}

/// `xl mem-set` through xenstore: dom0 writes a lower `memory/target`, waits until the domain
/// holds it (getdomaininfo), then writes the original; the domain's balloon follows both, its
/// frame count moves by exactly the difference and back, and the free-frame count with it.
#[test]
fn the_balloon_follows_memory_target_set_by_dom0() {
    let k = kernels();
    let mut m = Machine::scenario(&k, "balloon-xs moves=2").dom0_options("mem-set=tg:28672:32768");
    m.hv_cmdline = "arch_debug=domu".into();
    let run = boot(&m);
    run.expect_outcome(Outcome::Poweroff)
        .expect_no_line("crashed")
        .expect_line("TEST balloon-xs PASS")
        .expect_order("dom0: mem-set: d1 (tg) target kib=28672", "BALLOON down")
        .expect_order("dom0: mem-set: d1 (tg) reached kib=28672", "dom0: mem-set: d1 (tg) target kib=32768")
        .expect_order("BALLOON down", "BALLOON up")
        .expect_line("dom0: mem-set: d1 (tg) done");
    let down = figures(&run, "down");
    let up = figures(&run, "up");
    for (f, dir, sign) in [(&down, "down", 1), (&up, "up", -1)] {
        assert_eq!(field_i64(&run, f, "pages"), 1024, "{dir}\n{}", run.text());
        assert_free_moved(field_i64(&run, f, "free_delta"), sign * 1024, &format!("{dir}\n{}", run.text()));
        assert_eq!(field_i64(&run, f, "domain_delta"), -sign * 1024, "{dir}\n{}", run.text());
    }
    assert_eq!(field_i64(&run, down, "target_kib"), 28672, "{}", run.text());
    assert_eq!(field_i64(&run, down, "reservation"), 7168, "{}", run.text());
    assert_eq!(field_i64(&run, up, "target_kib"), 32768, "{}", run.text());
    assert_eq!(field_i64(&run, up, "reservation"), 8192, "{}", run.text());
    // dom0 saw the domain reach each target holding what its balloon says it reserved.
    for (kib, f) in [(28672, down), (32768, up)] {
        let reached = tests::line(&run, &format!("dom0: mem-set: d1 (tg) reached kib={kib} "));
        assert_eq!(field_i64(&run, reached, "pages"), field_i64(&run, f, "reservation"), "{reached}");
    }
    // Back where it started: the free count after going up is the one before going down.
    let free = |f: &str| -> (i64, i64) {
        let v = xtask::kv::get(f, "free").unwrap_or_else(|| panic!("no free= in {f}"));
        let (a, b) = v.split_once("->").unwrap_or_else(|| panic!("free={v} is not <before>-><after>"));
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert_free_moved(free(up).1 - free(down).0, 0, &run.text());
}
