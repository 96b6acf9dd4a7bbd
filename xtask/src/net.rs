//! The machine's network and the host's side of it: dom0 gets a virtio-net NIC on QEMU's user
//! network, isolated (`restrict=on`: the guests reach neither the host nor the outside), with
//! TCP ports of 127.0.0.1 forwarded to guest addresses (`hostfwd`), so nothing leaves this
//! machine and only the host reaches in. A small HTTP/1.0 client talks to the guests' servers
//! for the tests, `cargo xtask run` and the benchmarks.

use crate::qemu::{Machine, Outcome};
use crate::Result;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A host port forwarded to a guest's TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest: [u8; 4],
    pub guest_port: u16,
}

pub use hypercall_abi::microvisor::netdemo::{domu_ip, fill_pattern, pattern_hash, Fnv1a, DOM0_IP, GATEWAY};

fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// QEMU's `-netdev` value for these forwards, or `None` for no NIC.
pub fn netdev_arg(fw: &[Forward]) -> Option<String> {
    if fw.is_empty() {
        return None;
    }
    let mut s = String::from("user,id=n0,restrict=on,net=10.0.2.0/24");
    for f in fw {
        s += &format!(",hostfwd=tcp:127.0.0.1:{}-{}:{}", f.host_port, dotted(f.guest), f.guest_port);
    }
    Some(s)
}

/// `n` bytes of a xorshift64 stream from `seed`: an upload the guest cannot predict (unlike
/// the pattern), that the host checks against the guest's report of it.
pub fn unpredictable_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP port of 127.0.0.1 nothing listens on now (the OS's pick).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl Machine {
    /// Gives the machine its NIC (if it had none) and forwards a free host port to
    /// `guest:guest_port`; returns the host port.
    pub fn forward(&mut self, guest: [u8; 4], guest_port: u16) -> u16 {
        let host_port = free_port();
        self.forwards.push(Forward { host_port, guest, guest_port });
        host_port
    }
}

/// The port `cargo xtask run` forwards to the demo domU's HTTP server: 8080 when free (easy
/// to type), else one the OS picks.
pub fn demo_forward(m: &mut Machine, serve_s: u64) -> u16 {
    let port = if TcpListener::bind(("127.0.0.1", 8080)).is_ok() { 8080 } else { free_port() };
    m.forwards.push(Forward { host_port: port, guest: domu_ip(1), guest_port: 80 });
    if let Some(domu) = m.modules.get_mut(1) {
        let sep = if domu.args.contains(" -- ") { " " } else { " -- " };
        domu.args = format!("{}{sep}serve={serve_s}", domu.args);
    }
    port
}

/// Runs the demo machine with its console here, and once the domU serves, fetches its page
/// the way a person would with curl, and says how to try it by hand. The machine ends by
/// itself: the domU stops serving after `serve_s` seconds (or a `GET /bye`) and powers off.
pub fn run_demo(m: &Machine, port: u16, serve_s: u64) -> Result<Outcome> {
    crate::qemu::ensure_qemu()?;
    let mut cmd = m.command();
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let out = child.stdout.take().ok_or("no QEMU stdout")?;
    let mut fetcher = None;
    let stdout = std::io::stdout();
    for line in BufReader::new(out).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        {
            let mut o = stdout.lock();
            let _ = o.write_all(&line);
            let _ = o.write_all(b"\n");
            let _ = o.flush();
        }
        if fetcher.is_none() && text.contains("domU: http server listening") {
            fetcher = Some(std::thread::spawn(move || {
                let r = get_when_up(port, "/", Duration::from_secs(10));
                let url = format!("http://127.0.0.1:{port}/");
                match r {
                    Ok(r) => println!("xtask: curl {url} -> {} {}", r.status, r.text().trim()),
                    Err(e) => println!("xtask: curl {url} failed: {e}"),
                }
                println!(
                    "xtask: try it by hand for the next {serve_s} s: curl {url}  (also {url}bytes/<n>; \
                     `cargo xtask run --serve <s>` serves longer, curl {url}bye ends it)"
                );
            }));
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    if let Some(f) = fetcher {
        let _ = f.join();
    }
    Ok(Outcome::from_status(status.code()))
}

/// A response from a guest's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.0 request to `127.0.0.1:port` (`body` sent with a Content-Length if not
/// empty). Reads the answer up to its Content-Length, then closes.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: guest\r\n");
    if !body.is_empty() || method == "POST" {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (head_len, status, length) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            break (end + 4, status, length);
        }
    };
    let mut body = buf.split_off(head_len);
    loop {
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let _ = s.shutdown(Shutdown::Both);
    Ok(Response { status, body })
}

/// `GET path`, retrying a refused or reset connection until `within` has passed (the guest
/// may not listen yet, or QEMU's forward may not have found it).
pub fn get_when_up(port: u16, path: &str, within: Duration) -> std::io::Result<Response> {
    let start = Instant::now();
    loop {
        match http(port, "GET", path, &[], Duration::from_secs(30)) {
            Ok(r) => return Ok(r),
            Err(e) if start.elapsed() < within => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Round trips of one byte through a guest's echo service: the samples, in nanoseconds.
pub fn echo_rtts(port: u16, n: usize, timeout: Duration) -> std::io::Result<Vec<u64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let mut out = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        if b[0] != i as u8 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "echo returned another byte"));
        }
        out.push(t.elapsed().as_nanos() as u64);
    }
    let _ = s.shutdown(Shutdown::Both);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdev_arguments() {
        assert_eq!(netdev_arg(&[]), None);
        let fw = [
            Forward { host_port: 5000, guest: domu_ip(1), guest_port: 80 },
            Forward { host_port: 5001, guest: DOM0_IP, guest_port: 7 },
        ];
        assert_eq!(
            netdev_arg(&fw).unwrap(),
            "user,id=n0,restrict=on,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:5000-10.0.2.15:80,hostfwd=tcp:127.0.0.1:5001-10.0.2.10:7"
        );
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn the_client_reads_up_to_the_content_length() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = c.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"POST /sink HTTP/1.0\r\n"));
            // Answer, then keep the connection open: the client must stop at the length.
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        });
        let r = http(port, "POST", "/sink", b"abc", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        server.join().unwrap();
    }
}
