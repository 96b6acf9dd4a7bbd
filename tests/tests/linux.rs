//! Debian's unmodified cloud kernel (`linux-image-cloud-amd64`, CONFIG_XEN_PV=y) as a PV domU
//! of microvisor next to dom0 (issue 12): it boots to our initramfs's init, loads
//! xen-blkfront and xen-netfront, mounts its disk through dom0's blkback, reads a file the host
//! put there, writes one the host then reads back out of the image (debugfs), and powers off
//! with SCHEDOP_shutdown. Its console (hvc0) reaches the log through dom0's console backend as
//! `(d0) [linux] ...`. Skips loudly where apt cannot fetch the packages.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use tests::linux_domu::{self, DEADLINE};
use tests::{Outcome, RunExt};
use xtask::linux::{self, field, NetPlan, Role, NET_PREFIX, NET_READY};
use xtask::net::{domu_ip, fill_pattern, http, unpredictable_bytes, DOM0_IP, GATEWAY};

#[test]
fn debian_linux_boots_as_a_domu_and_uses_its_disk_through_blkback() {
    let test = "linux::debian_linux_boots_as_a_domu";
    let Some(g) = linux_domu::guest_or_skip(test, "domu-test", Role::DomU { shell: false }) else { return };
    let run = linux_domu::machine(&g, "").run(DEADLINE).unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    // Each marker is a step further; the first missing one says where Linux stopped.
    let markers = [
        "Linux version 6.",
        "Booting kernel on Xen",
        "xen:grant_table: Grant tables using version 1 layout",
        "Run /init as init process",
        "(d0) [linux] LINUXINIT start",
        "LINUXINIT insmod xen_blkfront.ko ok",
        "LINUXINIT insmod xen_netfront.ko ok",
        "LINUXINIT mounted /dev/xvda",
    ];
    run.expect_in_order(&markers);
    linux_domu::expect_disk_round_trip(&run, &g);
    run.expect_in_order(&[
        "LINUXINIT unmounted /dev/xvda",
        "LINUXINIT poweroff",
        "Domain 1 (linux) shut down: poweroff",
    ])
    .expect_outcome(Outcome::Poweroff)
    .expect_line("blkfront: xvda:")
    .expect_no_line("FAILED")
    // dom0's toolstack writes cpu/<n>/availability as xl does; without it Linux's
    // xen cpu_hotplug complains at boot.
    .expect_no_line("Unable to read cpu state")
    .expect_no_line("d1v0 crashed");
}

/// `a.b.c.d`.
fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// The bytes of `len` starting at pattern offset `start` (the network demo's pattern).
fn pattern_bytes(start: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(start, &mut v);
    v
}

/// What Linux serves from its initramfs: pattern bytes from an offset dom0's server never
/// sends, so they cannot be dom0's by mistake.
const SERVED_AT: u64 = 1 << 40;
const SERVED_LEN: usize = 2 << 20;
/// What Linux fetches from dom0's HTTP server (`/bytes/<n>`).
const FETCH_LEN: usize = 1 << 20;
/// What the host uploads to Linux's `nc -l`.
const UPLOAD_LEN: usize = 1 << 20;
const SINK_PORT: u16 = 9000;

/// The host's side, once Linux listens: fetch the served file from Linux's httpd, then
/// upload bytes Linux cannot predict to its sink. Returns what each step saw.
fn talk_to_linux(http_port: u16, sink_port: u16, upload: Vec<u8>) -> Vec<Result<String, String>> {
    let t = Duration::from_secs(120);
    let mut out = Vec::new();
    match http(http_port, "GET", "/linux.bin", &[], t) {
        Ok(r) if r.status == 200 && r.body == pattern_bytes(SERVED_AT, SERVED_LEN) => {
            out.push(Ok(format!("GET /linux.bin: {} bytes, all as served", r.body.len())))
        }
        Ok(r) => {
            let first_bad =
                r.body.iter().zip(pattern_bytes(SERVED_AT, SERVED_LEN)).position(|(a, b)| *a != b);
            out.push(Err(format!(
                "GET /linux.bin -> {} with {} bytes (want {SERVED_LEN}), first difference at {first_bad:?}",
                r.status,
                r.body.len()
            )))
        }
        Err(e) => out.push(Err(format!("GET /linux.bin: {e}"))),
    }
    let sent = TcpStream::connect(("127.0.0.1", sink_port)).and_then(|mut s| {
        s.set_write_timeout(Some(t))?;
        s.write_all(&upload)?;
        s.shutdown(Shutdown::Write)?;
        // Wait for Linux to close its side: then everything was read.
        s.set_read_timeout(Some(t))?;
        std::io::Read::read_to_end(&mut s, &mut Vec::new())
    });
    out.push(sent.map(|_| format!("uploaded {} bytes", upload.len())).map_err(|e| format!("upload: {e}")));
    out
}

#[test]
fn debian_linux_netfront_pings_and_moves_checked_bytes_through_our_netback() {
    let test = "linux::debian_linux_netfront_through_our_netback";
    let Some(g) = linux_domu::guest_or_skip(test, "net-test", Role::DomU { shell: false }) else { return };
    let me = domu_ip(1);
    let net = NetPlan {
        address: format!("{}/24", dotted(me)),
        gateway: dotted(GATEWAY),
        // dom0's own stack (through the switch alone), then QEMU's gateway (through the NIC).
        ping: vec![dotted(DOM0_IP), dotted(GATEWAY)],
        fetch: Some(format!("http://{}/bytes/{FETCH_LEN}", dotted(DOM0_IP))),
        serve: vec![("linux.bin".into(), pattern_bytes(SERVED_AT, SERVED_LEN))],
        sink_port: Some(SINK_PORT),
    };
    let g = g.with_net(net).unwrap_or_else(|u| panic!("{u}"));
    let mut m = linux_domu::machine(&g, "");
    let http_port = m.forward(me, 80);
    let sink_port = m.forward(me, SINK_PORT);
    // An upload Linux cannot predict: the host's own pseudo-random stream.
    let upload = unpredictable_bytes(0x9e37_79b9_7f4a_7c15 ^ u64::from(sink_port), UPLOAD_LEN);
    let upload_crc = format!("{:08x}", linux::crc32(&upload));
    let mut host = None;
    let run = m
        .run_watching(DEADLINE, |line| {
            if line.contains(NET_READY) && host.is_none() {
                let upload = upload.clone();
                host = Some(std::thread::spawn(move || talk_to_linux(http_port, sink_port, upload)));
            }
        })
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    let steps = host.map(|h| h.join().expect("the host side panicked")).unwrap_or_default();
    eprintln!("host side: {steps:?} (run {:.1?})", run.elapsed);
    if steps.len() != 2 || steps.iter().any(|s| s.is_err()) {
        panic!("host side: {steps:?}\n---- serial log ----\n{}", run.text());
    }
    let markers = [
        "LINUXINIT insmod xen_netfront.ko ok",
        "LINUXNET eth0 up",
        "LINUXNET ping peer=",
        "LINUXNET fetched",
        NET_READY,
        "LINUXNET sink",
        "LINUXNET done",
        "LINUXINIT poweroff",
        "Domain 1 (linux) shut down: poweroff",
    ];
    run.expect_in_order(&markers);
    run.expect_outcome(Outcome::Poweroff).expect_no_line("FAILED").expect_no_line("d1v0 crashed");
    // Linux's own account of each step, against what the host knows.
    let net_line = |what: &str| -> String {
        run.lines_with(&format!("{NET_PREFIX} {what}"))
            .next()
            .cloned()
            .unwrap_or_else(|| panic!("no `{NET_PREFIX} {what}` line\n{}", run.text()))
    };
    let up = net_line("eth0 up");
    let want_mac = "00:16:3e:00:01:00";
    assert_eq!(field(&up, "mac"), Some(want_mac), "{up}");
    for peer in [DOM0_IP, GATEWAY] {
        let l = net_line(&format!("ping peer={}", dotted(peer)));
        assert_eq!((field(&l, "transmitted"), field(&l, "received")), (Some("3"), Some("3")), "{l}");
    }
    let fetched = net_line("fetched");
    let want = (FETCH_LEN.to_string(), format!("{:08x}", linux::crc32(&pattern_bytes(0, FETCH_LEN))));
    assert_eq!(
        (field(&fetched, "bytes"), field(&fetched, "crc32")),
        (Some(&*want.0), Some(&*want.1)),
        "{fetched}"
    );
    let sink = net_line("sink");
    assert_eq!(
        (field(&sink, "bytes"), field(&sink, "crc32")),
        (Some(&*UPLOAD_LEN.to_string()), Some(&*upload_crc)),
        "{sink}"
    );
    // dom0's netback counted it all and refused nothing.
    let vif = run
        .lines_with("dom0: d1/vif0: disconnected (")
        .next()
        .unwrap_or_else(|| panic!("no vif disconnect line\n{}", run.text()));
    assert_eq!(
        (field(vif, "refused"), field(vif, "rx_errors"), field(vif, "ring_unmapped")),
        (Some("0"), Some("0"), Some("1")),
        "{vif}"
    );
}

/// What the test types at Linux's shell, and the line only the shell's arithmetic can print.
const TYPED: &[u8] = b"echo shell-says-$((6*7)) on $(uname -r)\n";
const ANSWER: &str = "[linux] shell-says-42 on ";

#[test]
fn debian_linux_leaves_a_shell_on_the_serial_console_that_takes_typed_commands() {
    let test = "linux::debian_linux_leaves_a_shell_on_the_serial_console";
    let Some(g) = linux_domu::guest_or_skip(test, "shell-test", Role::DomU { shell: true }) else { return };
    // As `cargo xtask run --linux` builds it: dom0 gives Linux the serial line's input.
    let m = linux_domu::machine(&g, "").with_console_input("linux");
    let mut step = 0;
    let run = m
        .run_typing(DEADLINE, |line| match step {
            0 if line.contains(linux::SHELL_READY) => {
                step = 1;
                Some(TYPED.to_vec())
            }
            1 if line.contains(ANSWER) => {
                step = 2;
                Some(b"poweroff -f\n".to_vec())
            }
            _ => None,
        })
        .unwrap_or_else(|e| panic!("cannot run QEMU: {e}"));
    run.expect_order("dom0: d1 (linux) takes the serial console's input", linux::SHELL_READY)
        .expect_order(linux::SHELL_READY, ANSWER)
        .expect_order(ANSWER, "Domain 1 (linux) shut down: poweroff")
        .expect_outcome(Outcome::Poweroff)
        .expect_no_line("d1v0 crashed");
    // The shell ran the command on the kernel it booted.
    let answer = run.lines_with(ANSWER).next().unwrap_or_else(|| panic!("{}", run.text()));
    assert!(answer.ends_with(&g.kernel.release), "{answer}");
}
