//! The balloon driver against the hypervisor's accounting: ballooning down by N pages frees N
//! machine frames and takes N from the domain, ballooning back up reverses both exactly.

use tests::{boot, kernels, Machine, Outcome, Run, RunExt};

/// The `key=value` fields of the first line starting with `BALLOON <dir> `.
fn figures(run: &Run, dir: &str) -> Vec<(String, String)> {
    let prefix = format!("BALLOON {dir} ");
    let line = run
        .log
        .iter()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", run.text()));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(f: &[(String, String)], key: &str) -> i64 {
    f.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {f:?}"))
}

fn balloon_down_and_up(target: u64, want_pages: i64) {
    let k = kernels();
    let run = boot(&Machine::scenario(&k, &format!("balloon balloon={target}")));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("crashed");
    let down = figures(&run, "down");
    let up = figures(&run, "up");
    assert_eq!(field(&down, "pages"), want_pages, "{}", run.text());
    assert_eq!(field(&down, "free_delta"), want_pages, "{}", run.text());
    assert_eq!(field(&down, "domain_delta"), -want_pages, "{}", run.text());
    assert_eq!(field(&up, "pages"), want_pages, "{}", run.text());
    assert_eq!(field(&up, "free_delta"), -want_pages, "{}", run.text());
    assert_eq!(field(&up, "domain_delta"), want_pages, "{}", run.text());
    // The domain's reservation follows: 8192 pages at boot.
    assert_eq!(field(&down, "reservation"), 8192 - want_pages, "{}", run.text());
    assert_eq!(field(&up, "reservation"), 8192, "{}", run.text());
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
