//! The network benchmarks of `cargo xtask bench`, in a boot of their own: dom0 with the NIC,
//! a `sink` domU and a `flood` domU (`testguest` scenario `net-bench`). The host measures TCP
//! throughput both ways and 1-byte round trips against the sink domU (netfront → netback →
//! switch → virtio-net → QEMU's user network) and against dom0's own stack on the same
//! switch (the native comparison), alternating the two so drift hits both alike; then the
//! flood domU measures, through the switch alone, the small-packet rate into the sink, a TCP
//! transfer and round trips domU to domU (its `BENCH` lines). Every transfer's bytes are
//! checked; timings are figures, never pass/fail.

use crate::bench::BenchResult;
use crate::kernels::Kernels;
use crate::net::{domu_ip, echo_rtts, get_when_up, http, pattern_hash, Fnv1a, DOM0_IP};
use crate::qemu::{Machine, Module, Outcome};
use crate::Result;
use hypercall_abi::microvisor::bench::Stats;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes per throughput run, runs per direction and target, round trips per target.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub bytes: usize,
    pub runs: usize,
    pub rtts: usize,
}

impl Plan {
    /// What `cargo xtask bench` measures.
    pub const FULL: Plan = Plan { bytes: 4 << 20, runs: 8, rtts: 2000 };
    /// A quick pass for the smoke test.
    pub const SMOKE: Plan = Plan { bytes: 256 << 10, runs: 2, rtts: 50 };
}

/// The forwarded host ports of one bench machine.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub domu_http: u16,
    pub domu_echo: u16,
    pub dom0_http: u16,
    pub dom0_echo: u16,
}

/// The machine: dom0, the sink (d1, 10.0.2.15) and the flooder (d2).
pub fn machine(k: &Kernels) -> (Machine, Ports) {
    let mut m = Machine::standard(k);
    m.modules = vec![
        Module::new(&k.dom0, "name=dom0 mem=64M -- steps=0 vrng=none"),
        Module::new(&k.testguest, "name=netsink mem=32M -- scenario=net-bench role=sink"),
        Module::new(
            &k.testguest,
            "name=netflood mem=32M -- scenario=net-bench role=flood after=1 peer=10.0.2.15",
        ),
    ];
    let ports = Ports {
        domu_http: m.forward(domu_ip(1), 80),
        domu_echo: m.forward(domu_ip(1), 7),
        dom0_http: m.forward(DOM0_IP, 80),
        dom0_echo: m.forward(DOM0_IP, 7),
    };
    (m, ports)
}

fn result(name: &str, unit: &str, samples: &mut [u64]) -> Option<BenchResult> {
    let s = Stats::compute(samples)?;
    Some(BenchResult {
        name: name.into(),
        unit: unit.into(),
        n: s.n,
        min: s.min,
        median: s.median,
        p99: s.p99,
        mode: "wall".into(),
        system: crate::bench::microvisor(),
    })
}

fn kib_s(bytes: usize, t: Duration) -> u64 {
    (bytes as f64 / 1024.0 / t.as_secs_f64().max(1e-9)) as u64
}

/// One download of `bytes` pattern bytes, checked: its KiB/s.
fn download(port: u16, bytes: usize) -> std::result::Result<u64, String> {
    let t = Instant::now();
    let r = http(port, "GET", &format!("/bytes/{bytes}"), &[], Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let el = t.elapsed();
    let mut h = Fnv1a::new();
    h.update(&r.body);
    if r.status != 200 || r.body.len() != bytes || h.finish() != pattern_hash(bytes as u64) {
        return Err(format!(
            "GET /bytes/{bytes}: {} with {} bytes, hash {:016x}",
            r.status,
            r.body.len(),
            h.finish()
        ));
    }
    Ok(kib_s(bytes, el))
}

/// One upload of `body`, its hash checked by the guest's answer: its KiB/s.
fn upload(port: u16, body: &[u8], want: &str) -> std::result::Result<u64, String> {
    let t = Instant::now();
    let r = http(port, "POST", "/sink", body, Duration::from_secs(120)).map_err(|e| e.to_string())?;
    let el = t.elapsed();
    if r.status != 200 || r.text().trim() != want {
        return Err(format!("POST /sink: {} {:?}, want {want:?}", r.status, r.text()));
    }
    Ok(kib_s(body.len(), el))
}

/// The host's measurements, once the sink serves.
pub fn measure(p: Ports, plan: Plan) -> std::result::Result<Vec<BenchResult>, String> {
    get_when_up(p.domu_http, "/", Duration::from_secs(60)).map_err(|e| format!("domU: {e}"))?;
    get_when_up(p.dom0_http, "/", Duration::from_secs(60)).map_err(|e| format!("dom0: {e}"))?;
    let mut out = Vec::new();
    let targets = [("host_domu", p.domu_http, p.domu_echo), ("host_dom0", p.dom0_http, p.dom0_echo)];
    for (who, _, echo) in targets {
        let mut s =
            echo_rtts(echo, plan.rtts, Duration::from_secs(30)).map_err(|e| format!("{who} echo: {e}"))?;
        out.extend(result(&format!("net.rtt.{who}"), "ns", &mut s));
    }
    let body: Vec<u8> = (0..plan.bytes as u64).map(hypercall_abi::microvisor::netdemo::pattern).collect();
    let mut h = Fnv1a::new();
    h.update(&body);
    let want = format!("{} {:016x}", body.len(), h.finish());
    let (mut rx, mut tx) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    // Alternating, so whatever else the host does hits both targets alike.
    for _ in 0..plan.runs {
        for (i, (who, http_port, _)) in targets.iter().enumerate() {
            rx[i].push(download(*http_port, plan.bytes).map_err(|e| format!("{who}: {e}"))?);
            tx[i].push(upload(*http_port, &body, &want).map_err(|e| format!("{who}: {e}"))?);
        }
    }
    for (i, (who, _, _)) in targets.iter().enumerate() {
        out.extend(result(&format!("net.tcp_rx.{who}"), "KiB/s", &mut rx[i]));
        out.extend(result(&format!("net.tcp_tx.{who}"), "KiB/s", &mut tx[i]));
    }
    Ok(out)
}

/// Boots the network bench machine, measures, and returns every network figure (the host's
/// and the guests' `BENCH` lines), with the serial log.
pub fn run(k: &Kernels, plan: Plan) -> Result<(Vec<BenchResult>, crate::qemu::Run)> {
    let (m, ports) = machine(k);
    let (tx, rx) = mpsc::channel();
    let mut started = false;
    let run = m.run_watching(Duration::from_secs(900), |line| {
        if !started && line.contains("net-bench: ready") {
            started = true;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let r = measure(ports, plan);
                // Whatever happened, let the sink go on to its next turn.
                let _ = http(ports.domu_http, "GET", "/bye", &[], Duration::from_secs(30));
                let _ = tx.send(r);
            });
        }
    })?;
    let host = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| String::from("the host's measurements never finished"))?;
    let mut results = host.map_err(|e| format!("network benchmark: {e}\n{}", run.text()))?;
    if run.outcome != Outcome::Poweroff {
        return Err(format!("network bench machine ended with {:?}\n{}", run.outcome, run.text()));
    }
    results.extend(crate::bench::parse(&run.log, "wall").into_iter().filter(|r| r.name.starts_with("net.")));
    // The guests' own accounts of the flood and transfers (everything with NETBENCH_LOG=1).
    let all = std::env::var_os("NETBENCH_LOG").is_some();
    for l in run.log.iter().filter(|l| {
        all || l.contains("net-bench: ") || l.contains("net-flood: ") || l.contains("/vif0: disconnected")
    }) {
        println!("{l}");
    }
    Ok((results, run))
}

/// Xen netback's published packet rate, for the comparison line.
pub const XEN_NETBACK_MPPS: f64 = 2.04;

/// The lines printed under the table: the domU/dom0 throughput ratios against the goal, and
/// the packet rate next to Xen netback's published figure.
pub fn summary(results: &[BenchResult]) -> String {
    let mut out = String::new();
    for dir in ["tcp_rx", "tcp_tx"] {
        if let Some(x) =
            crate::bench::ratio(results, &format!("net.{dir}.host_domu"), &format!("net.{dir}.host_dom0"))
        {
            out += &format!("net.{dir}.host_domu / net.{dir}.host_dom0 = {x:.2} (goal >= 0.80)\n");
        }
    }
    if let Some(r) = results.iter().find(|r| r.name == "net.pps.domu_domu") {
        out += &format!(
            "net.pps.domu_domu = {:.3} Mpps of 60-byte frames domU->dom0 switch->domU under QEMU/TCG on this \
             machine; Xen netback's published {XEN_NETBACK_MPPS} Mpps is a different machine (real hardware) \
             and unit (its own packet size and path), so not a like-for-like ratio\n",
            r.median as f64 / 1e6
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let r = |name: &str, median| BenchResult {
            name: name.into(),
            unit: "KiB/s".into(),
            n: 1,
            min: median,
            median,
            p99: median,
            mode: "wall".into(),
            system: "microvisor".into(),
        };
        let s = summary(&[
            r("net.tcp_rx.host_domu", 800),
            r("net.tcp_rx.host_dom0", 1000),
            r("net.pps.domu_domu", 123_000),
        ]);
        assert!(s.contains("net.tcp_rx.host_domu / net.tcp_rx.host_dom0 = 0.80 (goal >= 0.80)"), "{s}");
        assert!(s.contains("0.123 Mpps") && s.contains("2.04 Mpps"), "{s}");
        assert!(!s.contains("tcp_tx"));
    }
}
