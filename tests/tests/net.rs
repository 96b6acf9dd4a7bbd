//! The split network end to end: dom0 drives QEMU's virtio-net (user network, isolated, host
//! ports forwarded to guest addresses), switches frames between it, its own stack and the
//! domUs' vifs (netback), and the domUs run smoltcp over netfront. Every byte is checked on
//! the host: what the host fetched is compared with the pattern, what it uploaded with the
//! hash the guest reports, what one domU fetched from another with the hash it prints.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::{field, field_i64, guest_value, kernels, Machine, Module, Outcome, Run, RunExt, DEADLINE};
use xtask::net::{domu_ip, get_when_up, http, pattern_hash, unpredictable_bytes, Fnv1a, DOM0_IP};

/// What the host did while the machine ran: one line per step, or the first failure.
type Steps = Arc<Mutex<Vec<Result<String, String>>>>;

fn run_with(
    m: &Machine,
    ready: &'static str,
    talk: impl FnOnce() -> Vec<Result<String, String>> + Send + 'static,
) -> (Run, Vec<Result<String, String>>) {
    let steps: Steps = Arc::default();
    let mut talk = Some(talk);
    let mut worker = None;
    let run = m
        .run_watching(DEADLINE, |line| {
            if line.contains(ready) {
                if let Some(t) = talk.take() {
                    let steps = steps.clone();
                    worker = Some(std::thread::spawn(move || {
                        let out = t();
                        steps.lock().unwrap().extend(out);
                    }));
                }
            }
        })
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    if let Some(w) = worker {
        let _ = w.join();
    }
    let steps = steps.lock().unwrap().clone();
    (run, steps)
}

fn expect_steps(run: &Run, steps: &[Result<String, String>], n: usize) {
    eprintln!("host side: {steps:?} (run {:.1?})", run.elapsed);
    let failed: Vec<&String> = steps.iter().filter_map(|s| s.as_ref().err()).collect();
    if !failed.is_empty() || steps.len() != n {
        panic!("host side: {steps:?}\n---- serial log ----\n{}", run.text());
    }
}

/// The host's conversation with a guest server on `port`: a greeting, 1 MiB fetched and
/// checked, 256 KiB uploaded and the guest's hash of it checked, then `/bye`.
fn converse(port: u16, who: &'static str) -> Vec<Result<String, String>> {
    let t = Duration::from_secs(60);
    let mut out = Vec::new();
    let step = |r: Result<String, String>, out: &mut Vec<Result<String, String>>| {
        let bad = r.is_err();
        out.push(r);
        !bad
    };
    let hello = get_when_up(port, "/", Duration::from_secs(30)).map_err(|e| format!("GET /: {e}"));
    let ok = step(
        hello.and_then(|r| {
            (r.status == 200 && r.text().starts_with(&format!("hello from {who}")))
                .then(|| format!("GET / -> {}", r.text().trim()))
                .ok_or(format!("GET / -> {} {:?}", r.status, r.text()))
        }),
        &mut out,
    );
    if !ok {
        return out;
    }
    let n = 1 << 20;
    let got = http(port, "GET", &format!("/bytes/{n}"), &[], t).map_err(|e| format!("GET /bytes: {e}"));
    let ok = step(
        got.and_then(|r| {
            let mut h = Fnv1a::new();
            h.update(&r.body);
            (r.status == 200 && r.body.len() == n && h.finish() == pattern_hash(n as u64))
                .then(|| format!("GET /bytes/{n}: {} bytes, pattern intact", r.body.len()))
                .ok_or(format!(
                    "GET /bytes/{n} -> {} with {} bytes, hash {:016x}",
                    r.status,
                    r.body.len(),
                    h.finish()
                ))
        }),
        &mut out,
    );
    if !ok {
        return out;
    }
    // An upload of bytes the guest cannot predict: the host's own pseudo-random stream.
    let body = unpredictable_bytes(0x2545_f491_4f6c_dd1d ^ u64::from(port), 256 * 1024);
    let mut h = Fnv1a::new();
    h.update(&body);
    let want = format!("{} {:016x}", body.len(), h.finish());
    let up = http(port, "POST", "/sink", &body, t).map_err(|e| format!("POST /sink: {e}"));
    let ok = step(
        up.and_then(|r| {
            (r.status == 200 && r.text().trim() == want)
                .then(|| format!("POST /sink: the guest hashed {want}"))
                .ok_or(format!("POST /sink -> {} {:?}, want {want:?}", r.status, r.text()))
        }),
        &mut out,
    );
    if !ok {
        return out;
    }
    let bye = http(port, "GET", "/bye", &[], t).map_err(|e| format!("GET /bye: {e}"));
    step(bye.map(|r| format!("GET /bye -> {}", r.status)), &mut out);
    out
}

#[test]
fn the_host_fetches_from_and_uploads_to_a_domus_http_server() {
    let mut m = Machine::scenario(&kernels(), "net-serve");
    let port = m.forward(domu_ip(1), 80);
    let (run, steps) =
        run_with(&m, "net-serve: listening on 10.0.2.15:80", move || converse(port, "net-serve"));
    expect_steps(&run, &steps, 4);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("dom0: net 00:")
        .expect_line("dom0: d1/vif0 (tg): vif 00:16:3e:00:01:00 on dom0's switch")
        .expect_line("TEST net-serve PASS")
        .expect_no_line(" FAIL ");
    // dom0's counters agree with the frontend's and with what crossed: at least the 1 MiB out
    // and the 256 KiB in.
    let line = vif_agrees(&run, 1, "net-serve");
    assert!(field(&run, line, "tx_bytes") >= 1 << 20, "{line}");
    assert!(field(&run, line, "rx_bytes") >= 256 << 10, "{line}");
    assert_eq!(field(&run, line, "refused"), 0, "{line}");
}

/// dom0's line for domain `d`'s vif going away (its figures as `key=value`).
fn vif_line(run: &Run, d: u16) -> &str {
    tests::line(run, &format!("dom0: d{d}/vif0: disconnected ("))
}

/// dom0's counters of domain `d`'s vif against its netfront's (`<scenario>: netfront ...`):
/// every frame the frontend sent dom0 switched, refused or dropped, and the bytes it switched
/// are at most what was sent (all of it when nothing was dropped); dom0 gave the frontend at
/// least what it had received when it counted (more may arrive until it disconnects); both
/// rings were unmapped. Returns dom0's line.
fn vif_agrees<'a>(run: &'a Run, d: u16, scenario: &str) -> &'a str {
    let line = vif_line(run, d);
    let dom0 = |key| field_i64(run, line, key);
    let guest = |key| guest_value(run, d, scenario, key);
    assert_eq!(dom0("tx_packets") + dom0("refused") + dom0("dropped"), guest("tx_packets"), "{line}");
    match dom0("dropped") {
        0 => assert_eq!(dom0("tx_bytes"), guest("tx_bytes"), "{line}"),
        _ => assert!(dom0("tx_bytes") < guest("tx_bytes"), "{line}"),
    }
    assert!(dom0("rx_packets") >= guest("rx_packets") && guest("rx_packets") > 0, "{line}");
    assert!(dom0("rx_bytes") >= guest("rx_bytes"), "{line}");
    assert_eq!((dom0("rx_errors"), dom0("ring_unmapped")), (0, 1), "{line}");
    line
}

#[test]
fn two_domus_reach_each_other_through_the_switch() {
    let k = kernels();
    let mut m = Machine::scenario(&k, "net-serve");
    let n = 3 << 20;
    m.modules.push(Module::new(
        &k.testguest,
        &format!("name=tg2 mem=32M -- scenario=net-fetch peer=10.0.2.15 bytes={n}"),
    ));
    // The NIC is there (the switch has an uplink) though the host does not talk.
    m.forward(domu_ip(1), 80);
    let run = tests::boot(&m);
    run.expect_outcome(Outcome::Poweroff).expect_line("TEST net-serve PASS").expect_no_line(" FAIL ");
    run.expect_line("TEST net-fetch PASS");
    // tg2 fetched the whole pattern from tg: its length and hash are the host's.
    assert_eq!(guest_value(&run, 2, "net-fetch", "bytes"), n as i64);
    let line = tests::line(&run, "(d2) net-fetch: bytes=");
    assert_eq!(xtask::kv::get(line, "fnv"), Some(&*format!("{:016x}", pattern_hash(n))), "{line}");
}

#[test]
fn the_host_reaches_dom0s_own_stack() {
    let mut m = Machine::scenario(&kernels(), "net-serve");
    let port = m.forward(DOM0_IP, 80);
    let domu = m.forward(domu_ip(1), 80);
    let (run, steps) = run_with(&m, "net-serve: listening", move || {
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        let r = get_when_up(port, "/bytes/100000", Duration::from_secs(30));
        eprintln!("dom0 fetch took {:?}", t0.elapsed());
        out.push(match r {
            Ok(r)
                if r.status == 200 && r.body.len() == 100_000 && {
                    let mut h = Fnv1a::new();
                    h.update(&r.body);
                    h.finish() == pattern_hash(100_000)
                } =>
            {
                Ok(String::from("dom0 served 100000 pattern bytes"))
            }
            Ok(r) => Err(format!("dom0: {} with {} bytes", r.status, r.body.len())),
            Err(e) => Err(format!("dom0: {e}")),
        });
        out.push(
            http(domu, "GET", "/bye", &[], Duration::from_secs(30))
                .map(|r| r.text())
                .map_err(|e| e.to_string()),
        );
        out
    });
    expect_steps(&run, &steps, 2);
    run.expect_outcome(Outcome::Poweroff).expect_line("dom0 at 10.0.2.10").expect_no_line(" FAIL ");
}

#[test]
fn a_hostile_frontend_is_refused_and_flooding_does_not_stop_a_neighbours_traffic() {
    let k = kernels();
    let mut m = Machine::scenario(&k, "net-hostile flood=8");
    m.modules.push(Module::new(&k.testguest, "name=tg2 mem=32M -- scenario=net-serve"));
    let port = m.forward(domu_ip(2), 80);
    let (run, steps) = run_with(&m, "net-hostile: flooding", move || converse(port, "net-serve"));
    expect_steps(&run, &steps, 4);
    run.expect_outcome(Outcome::Poweroff)
        .expect_line("TEST net-hostile PASS")
        .expect_line("TEST net-serve PASS")
        .expect_line("dom0: d1/vif0: frontend broke the ring")
        .expect_no_line(" FAIL ");
    // The hostile vif's counters: dom0 refused every malformed packet the guest saw refused
    // (all 8 it sent), and tore the broken rings down.
    let line = vif_line(&run, 1);
    let refused = guest_value(&run, 1, "net-hostile", "refused");
    assert_eq!((field_i64(&run, line, "refused"), refused), (8, 8), "{line}");
    assert_eq!(field(&run, line, "ring_unmapped"), 1, "{line}");
    // The neighbour's traffic was all accounted for.
    vif_agrees(&run, 2, "net-serve");
}

/// The network benchmark's machine (`net-bench`: a sink and a flood domU next to dom0) runs a
/// short plan end to end: every transfer's bytes are checked by the runner, and each metric
/// the bench publishes comes back with samples (the figures themselves are the bench's
/// business, not a pass/fail matter).
#[test]
fn the_network_benchmark_runs_with_every_transfer_checked() {
    let k = kernels();
    let (results, run) =
        xtask::netbench::run(&k, xtask::netbench::Plan::SMOKE).unwrap_or_else(|e| panic!("{e}"));
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FATAL").expect_no_line("crashed");
    for name in [
        "net.tcp_rx.host_domu",
        "net.tcp_rx.host_dom0",
        "net.tcp_tx.host_domu",
        "net.tcp_tx.host_dom0",
        "net.rtt.host_domu",
        "net.rtt.host_dom0",
        "net.pps.domu_domu",
        "net.tcp.domu_domu",
        "net.rtt.domu_domu",
    ] {
        let r = results.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} in {results:?}"));
        assert!(r.n > 0, "{name} has no samples: {r:?}");
    }
}
