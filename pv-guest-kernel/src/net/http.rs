//! A small HTTP/1.0 server and client over [`super::Stack`], and a TCP echo service: what the
//! network demo, the QEMU tests and the benchmarks talk to.
//!
//! Server routes (one request per connection, `Connection: close`):
//! * `GET /` — a line naming the server and counting requests;
//! * `GET /bytes/<n>` — `n` bytes of [`netdemo::pattern`], streamed (throughput, and bytes
//!   a client can check);
//! * `POST /sink` with `Content-Length: n` — the body is read and answered with its length and
//!   FNV-1a hash (`<n> <hash>`), so the sender checks what arrived;
//! * `GET /bye` — answers, then [`Server::stopped`] is true.
//!
//! The peer is untrusted: a request head larger than [`MAX_HEAD`] or malformed gets `400`,
//! numbers are parsed strictly, and the server closes its side only after the client did
//! (so it never sits in `TIME_WAIT`), aborting a client that lingers past [`LINGER_NS`].

use super::Stack;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::microvisor::netdemo::{self, Fnv1a};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::Device;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

/// Largest request or response head read.
pub const MAX_HEAD: usize = 4096;
/// Largest `/bytes/<n>` served.
pub const MAX_BYTES: u64 = 1 << 32;
/// How long the server waits for a client to close after its answer.
pub const LINGER_NS: u64 = 5_000_000_000;

#[derive(Debug)]
enum Conn {
    /// Listening (or about to).
    Idle,
    /// Reading the request head.
    Head(Vec<u8>),
    /// Reading a `/sink` body.
    Body { left: u64, len: u64, hash: Fnv1a },
    /// Sending the answer: `head` then `stream` bytes of the pattern from `at` to `end`.
    Reply { out: Vec<u8>, sent: usize, at: u64, end: u64 },
    /// Answered: waiting for the client to close (since `since`).
    Linger { since: u64 },
}

/// What a parsed request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello,
    Bytes(u64),
    Sink(u64),
    Bye,
    NotFound,
    Bad,
}

/// Parses a request head (up to the blank line).
pub fn parse_request(head: &[u8]) -> Request {
    let Ok(text) = core::str::from_utf8(head) else { return Request::Bad };
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next()) else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || first.next().is_some() {
        return Request::Bad;
    }
    let has_length = lines
        .any(|l| l.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")));
    let content_length = has_length.then(|| content_length(head));
    match (method, path) {
        ("GET", "/") => Request::Hello,
        ("GET", "/bye") => Request::Bye,
        ("GET", p) if p.starts_with("/bytes/") => match parse_u64(&p[7..]) {
            Some(n) if n <= MAX_BYTES => Request::Bytes(n),
            _ => Request::Bad,
        },
        ("POST", "/sink") => match content_length {
            Some(Some(n)) => Request::Sink(n),
            _ => Request::Bad,
        },
        ("GET", _) | ("POST", _) => Request::NotFound,
        _ => Request::Bad,
    }
}

/// A decimal without sign or spaces, at most 19 digits.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn response(status: &str, body: &str, extra_len: u64) -> Vec<u8> {
    let len = body.len() as u64 + extra_len;
    format!("HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}")
        .into_bytes()
}

/// The `Content-Length` of a head, if it has a well-formed one.
pub fn content_length(head: &[u8]) -> Option<u64> {
    let text = core::str::from_utf8(head).ok()?;
    text.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| parse_u64(v.trim()))
}

/// The end of a head (`\r\n\r\n`), if present.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub requests: u64,
    pub bad: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// An HTTP server on one port, with a few connections at once.
pub struct Server {
    port: u16,
    name: String,
    conns: Vec<(SocketHandle, Conn)>,
    stopped: bool,
    pub stats: ServerStats,
}

impl Server {
    /// Listens on `port` with `conns` sockets (connections served at once).
    pub fn new<D: Device>(stack: &mut Stack<D>, port: u16, conns: usize, name: &str) -> Server {
        let conns = (0..conns.max(1)).map(|_| (stack.tcp_socket(), Conn::Idle)).collect();
        Server { port, name: String::from(name), conns, stopped: false, stats: ServerStats::default() }
    }

    /// True once a client asked for `/bye`.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Serves on after a `/bye` (until the next one).
    pub fn resume(&mut self) {
        self.stopped = false;
    }

    /// Moves every connection on; call after each [`Stack::poll`]. True if anything moved.
    pub fn poll<D: Device>(&mut self, stack: &mut Stack<D>, now_ns: u64) -> bool {
        let mut moved = false;
        for i in 0..self.conns.len() {
            let h = self.conns[i].0;
            // A connection that moved to its next state may have more to do at once (a
            // request read is answered in the same pass): a few steps while it moves.
            for _ in 0..4 {
                let s = stack.sockets.get_mut::<tcp::Socket>(h);
                let st = core::mem::replace(&mut self.conns[i].1, Conn::Idle);
                let (next, m) = self.step(s, st, now_ns);
                self.conns[i].1 = next;
                moved |= m;
                if !m {
                    break;
                }
            }
        }
        moved
    }

    fn step(&mut self, s: &mut tcp::Socket<'_>, st: Conn, now: u64) -> (Conn, bool) {
        match st {
            Conn::Idle => {
                if !s.is_open() {
                    let _ = s.listen(self.port);
                    return (Conn::Idle, false);
                }
                if s.may_recv() {
                    return (Conn::Head(Vec::new()), true);
                }
                (Conn::Idle, false)
            }
            Conn::Head(mut buf) => {
                if !s.is_active() {
                    return (Conn::Idle, true);
                }
                let room = MAX_HEAD - buf.len();
                let _ = s.recv(|d| {
                    let n = d.len().min(room);
                    buf.extend_from_slice(&d[..n]);
                    (n, ())
                });
                let Some(end) = head_end(&buf) else {
                    if buf.len() >= MAX_HEAD || !s.may_recv() {
                        self.stats.bad += 1;
                        return (self.reply(response("400 Bad Request", "bad request\n", 0), 0), true);
                    }
                    return (Conn::Head(buf), false);
                };
                self.stats.requests += 1;
                let body_start = buf.split_off(end);
                match parse_request(&buf) {
                    Request::Hello => {
                        let body = format!("hello from {} (request {})\n", self.name, self.stats.requests);
                        (self.reply(response("200 OK", &body, 0), 0), true)
                    }
                    Request::Bytes(n) => {
                        self.stats.bytes_out += n;
                        (Conn::Reply { out: response("200 OK", "", n), sent: 0, at: 0, end: n }, true)
                    }
                    Request::Sink(n) => {
                        let mut hash = Fnv1a::new();
                        let take = (body_start.len() as u64).min(n) as usize;
                        hash.update(&body_start[..take]);
                        self.stats.bytes_in += take as u64;
                        (Conn::Body { left: n - take as u64, len: n, hash }, true)
                    }
                    Request::Bye => {
                        self.stopped = true;
                        (self.reply(response("200 OK", "bye\n", 0), 0), true)
                    }
                    Request::NotFound => (self.reply(response("404 Not Found", "not found\n", 0), 0), true),
                    Request::Bad => {
                        self.stats.bad += 1;
                        (self.reply(response("400 Bad Request", "bad request\n", 0), 0), true)
                    }
                }
            }
            Conn::Body { mut left, len, mut hash } => {
                if !s.is_active() {
                    return (Conn::Idle, true);
                }
                let mut got = 0;
                while left > 0 && s.can_recv() {
                    let n = s
                        .recv(|d| {
                            let n = (d.len() as u64).min(left) as usize;
                            hash.update(&d[..n]);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    left -= n as u64;
                    got += n;
                }
                self.stats.bytes_in += got as u64;
                if left == 0 {
                    let body = format!("{len} {:016x}\n", hash.finish());
                    return (self.reply(response("200 OK", &body, 0), 0), true);
                }
                if !s.may_recv() {
                    // The client stopped short of its Content-Length.
                    s.abort();
                    return (Conn::Idle, true);
                }
                (Conn::Body { left, len, hash }, got > 0)
            }
            Conn::Reply { out, mut sent, mut at, end } => {
                if !s.is_active() {
                    return (Conn::Idle, true);
                }
                let before = (sent, at);
                if sent < out.len() {
                    sent += s.send_slice(&out[sent..]).unwrap_or(0);
                }
                while sent == out.len() && at < end && s.can_send() {
                    let n = s
                        .send(|buf| {
                            let n = (buf.len() as u64).min(end - at) as usize;
                            netdemo::fill_pattern(at, &mut buf[..n]);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    at += n as u64;
                }
                let moved = before != (sent, at);
                if sent == out.len() && at == end {
                    return (Conn::Linger { since: now }, true);
                }
                (Conn::Reply { out, sent, at, end }, moved)
            }
            Conn::Linger { since } => {
                // Drain whatever the client still sends; close once it has closed.
                while s.can_recv() && s.recv(|d| (d.len(), ())).is_ok() {}
                if !s.is_active() {
                    return (Conn::Idle, true);
                }
                if !s.may_recv() {
                    s.close();
                    if s.send_queue() == 0 {
                        return (Conn::Idle, true);
                    }
                } else if now.saturating_sub(since) > LINGER_NS {
                    s.abort();
                    return (Conn::Idle, true);
                }
                (Conn::Linger { since }, false)
            }
        }
    }

    fn reply(&self, out: Vec<u8>, stream: u64) -> Conn {
        Conn::Reply { out, sent: 0, at: 0, end: stream }
    }
}

/// What a client request ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    /// Body bytes received, and their FNV-1a hash.
    pub len: u64,
    pub hash: u64,
    /// The body was [`netdemo::pattern`] from its first byte to its last.
    pub pattern: bool,
}

#[derive(Debug)]
enum Get {
    Connecting,
    Sending {
        sent: usize,
    },
    Head(Vec<u8>),
    /// The body: `len` bytes so far of `expect` (its Content-Length, if given).
    Body {
        status: u16,
        len: u64,
        expect: Option<u64>,
        hash: Fnv1a,
        pattern: bool,
    },
    Done,
}

/// An HTTP GET to one server.
pub struct Client {
    h: SocketHandle,
    request: Vec<u8>,
    st: Get,
    started: u64,
    /// The first 256 bytes of the body (for printing a greeting).
    pub preview: Vec<u8>,
}

impl Client {
    /// Connects from `local_port` to `ip:port` and asks for `path`.
    pub fn get<D: Device>(
        stack: &mut Stack<D>,
        ip: [u8; 4],
        port: u16,
        path: &str,
        local_port: u16,
        now_ns: u64,
    ) -> Result<Client, &'static str> {
        let h = stack.tcp_socket();
        let [a, b, c, d] = ip;
        let remote = IpEndpoint::new(IpAddress::v4(a, b, c, d), port);
        let cx = stack.iface.context();
        stack
            .sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, remote, local_port)
            .map_err(|_| "cannot connect")?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {a}.{b}.{c}.{d}\r\n\r\n").into_bytes();
        Ok(Client { h, request, st: Get::Connecting, started: now_ns, preview: Vec::new() })
    }

    /// Moves the request on; the result once the server closed (or `timeout_ns` passed since
    /// the start, or the connection failed).
    pub fn poll<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        now_ns: u64,
        timeout_ns: u64,
    ) -> Option<Result<Fetched, &'static str>> {
        if now_ns.saturating_sub(self.started) > timeout_ns {
            stack.sockets.get_mut::<tcp::Socket>(self.h).abort();
            return Some(Err("timed out"));
        }
        let s = stack.sockets.get_mut::<tcp::Socket>(self.h);
        loop {
            match &mut self.st {
                Get::Connecting => {
                    if s.state() == State::Established {
                        self.st = Get::Sending { sent: 0 };
                        continue;
                    }
                    if !s.is_open() {
                        return Some(Err("connection refused"));
                    }
                    return None;
                }
                Get::Sending { sent } => {
                    *sent += s.send_slice(&self.request[*sent..]).unwrap_or(0);
                    if *sent < self.request.len() {
                        return None;
                    }
                    self.st = Get::Head(Vec::new());
                }
                Get::Head(buf) => {
                    let room = MAX_HEAD - buf.len();
                    let _ = s.recv(|d| {
                        let n = d.len().min(room);
                        buf.extend_from_slice(&d[..n]);
                        (n, ())
                    });
                    let Some(end) = head_end(buf) else {
                        if buf.len() >= MAX_HEAD || !s.may_recv() {
                            return Some(Err("bad response head"));
                        }
                        return None;
                    };
                    let rest = buf.split_off(end);
                    let status = core::str::from_utf8(buf)
                        .ok()
                        .and_then(|t| t.split(' ').nth(1))
                        .and_then(|c| c.parse::<u16>().ok());
                    let Some(status) = status else { return Some(Err("bad status line")) };
                    let expect = content_length(buf);
                    let mut hash = Fnv1a::new();
                    hash.update(&rest);
                    self.preview.extend_from_slice(&rest[..rest.len().min(256)]);
                    let pattern = netdemo::is_pattern(0, &rest);
                    self.st = Get::Body { status, len: rest.len() as u64, expect, hash, pattern };
                }
                Get::Body { status, len, expect, hash, pattern } => {
                    while s.can_recv() {
                        let at = *len;
                        let n = s
                            .recv(|d| {
                                hash.update(d);
                                *pattern &= netdemo::is_pattern(at, d);
                                (d.len(), d.len())
                            })
                            .unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        *len += n as u64;
                    }
                    // Done at Content-Length (then we close first), or when the server closes.
                    let complete = expect.is_some_and(|e| *len >= e);
                    if s.may_recv() && !complete {
                        return None;
                    }
                    let done = Fetched { status: *status, len: *len, hash: hash.finish(), pattern: *pattern };
                    s.close();
                    self.st = Get::Done;
                    return Some(Ok(done));
                }
                Get::Done => return Some(Err("already done")),
            }
        }
    }
}

/// A TCP echo service (RFC 862): every byte received is sent back, for round-trip
/// measurements. Back-pressure is TCP's: nothing is read while the send buffer is full.
pub struct Echo {
    port: u16,
    socks: Vec<SocketHandle>,
    /// Bytes echoed in all.
    pub bytes: u64,
}

impl Echo {
    /// Listens on `port` with `conns` sockets.
    pub fn new<D: Device>(stack: &mut Stack<D>, port: u16, conns: usize) -> Echo {
        Echo { port, socks: (0..conns.max(1)).map(|_| stack.tcp_socket()).collect(), bytes: 0 }
    }

    /// Echoes what arrived; call after each [`Stack::poll`]. True if anything moved.
    pub fn poll<D: Device>(&mut self, stack: &mut Stack<D>) -> bool {
        let mut moved = false;
        for &h in &self.socks {
            let s = stack.sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                let _ = s.listen(self.port);
                continue;
            }
            while s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                let mut chunk = [0u8; 1024];
                let n = s.recv_slice(&mut chunk[..room.min(1024)]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&chunk[..n]);
                self.bytes += n as u64;
                moved = true;
            }
            // The client closed and everything it sent is back: close our side too.
            if s.state() == State::CloseWait && !s.can_recv() && s.send_queue() == 0 {
                s.close();
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{self, End};
    use super::super::{Addr, Stack};
    use super::*;
    use alloc::vec;

    const A: [u8; 4] = [10, 0, 2, 15];
    const B: [u8; 4] = [10, 0, 2, 16];

    fn stacks() -> (Stack<End>, Stack<End>) {
        let (ea, eb) = wire::pair();
        let a = Stack::new(ea, [0, 0x16, 0x3e, 0, 1, 0], Addr { ip: A, prefix: 24, gateway: None }, 1, 0);
        let b = Stack::new(eb, [0, 0x16, 0x3e, 0, 2, 0], Addr { ip: B, prefix: 24, gateway: None }, 2, 0);
        (a, b)
    }

    /// Runs both stacks until the client is done (1 ms of fake time per step).
    fn fetch(
        a: &mut Stack<End>,
        srv: &mut Server,
        b: &mut Stack<End>,
        path: &str,
    ) -> Result<Fetched, &'static str> {
        let mut c = Client::get(b, A, 80, path, 40000 + path.len() as u16, 0)?;
        for t in 0..200_000u64 {
            let now = t * 1_000_000;
            a.poll(now);
            srv.poll(a, now);
            a.poll(now);
            b.poll(now);
            if let Some(r) = c.poll(b, now, 60_000_000_000) {
                // Done at its Content-Length, not by the server giving up on it.
                assert!(now < LINGER_NS / 2, "took {} ms", now / 1_000_000);
                return r;
            }
        }
        Err("did not finish")
    }

    #[test]
    fn a_client_gets_a_greeting_and_a_checked_body() {
        let (mut a, mut b) = stacks();
        let mut srv = Server::new(&mut a, 80, 2, "test");
        let r = fetch(&mut a, &mut srv, &mut b, "/").unwrap();
        assert_eq!(r.status, 200);
        let n = 300_000;
        let r = fetch(&mut a, &mut srv, &mut b, &format!("/bytes/{n}")).unwrap();
        assert_eq!((r.status, r.len, r.pattern), (200, n, true));
        assert_eq!(r.hash, netdemo::pattern_hash(n));
        assert_eq!(fetch(&mut a, &mut srv, &mut b, "/nope").unwrap().status, 404);
        assert_eq!(fetch(&mut a, &mut srv, &mut b, "/bytes/-1").unwrap().status, 400);
        assert!(!srv.stopped());
        assert_eq!(fetch(&mut a, &mut srv, &mut b, "/bye").unwrap().status, 200);
        assert!(srv.stopped());
        assert_eq!(srv.stats.requests, 5);
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Hello);
        assert_eq!(parse_request(b"GET /bytes/10 HTTP/1.0\r\n\r\n"), Request::Bytes(10));
        assert_eq!(parse_request(b"POST /sink HTTP/1.1\r\ncontent-length: 7\r\n\r\n"), Request::Sink(7));
        for bad in [
            &b"GET /bytes/1e3 HTTP/1.0\r\n\r\n"[..],
            b"GET /bytes/99999999999999 HTTP/1.0\r\n\r\n",
            b"POST /sink HTTP/1.0\r\n\r\n",
            b"POST /sink HTTP/1.0\r\nContent-Length: -5\r\n\r\n",
            b"GET / SPDY\r\n\r\n",
            b"GET  / HTTP/1.0\r\n\r\n",
            b"\xff\xfe",
            b"DELETE / HTTP/1.0\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Request::Bad, "{bad:?}");
        }
        assert_eq!(parse_request(b"GET /x HTTP/1.0\r\n\r\n"), Request::NotFound);
    }

    #[test]
    fn a_sink_reports_length_and_hash_and_an_echo_echoes() {
        let (mut a, mut b) = stacks();
        let mut srv = Server::new(&mut a, 80, 1, "test");
        let mut echo = Echo::new(&mut a, 7, 1);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut want = Fnv1a::new();
        want.update(&body);
        let mut req = format!("POST /sink HTTP/1.0\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body);
        let h = b.tcp_socket();
        let e = b.tcp_socket();
        let cx = b.iface.context();
        b.sockets.get_mut::<tcp::Socket>(h).connect(cx, (IpAddress::v4(10, 0, 2, 15), 80), 41000).unwrap();
        let cx = b.iface.context();
        b.sockets.get_mut::<tcp::Socket>(e).connect(cx, (IpAddress::v4(10, 0, 2, 15), 7), 41001).unwrap();
        let (mut sent, mut got, mut echoed, mut pinged) = (0, Vec::new(), Vec::new(), false);
        for t in 0..100_000u64 {
            let now = t * 1_000_000;
            a.poll(now);
            srv.poll(&mut a, now);
            echo.poll(&mut a);
            a.poll(now);
            b.poll(now);
            let s = b.sockets.get_mut::<tcp::Socket>(h);
            if s.can_send() && sent < req.len() {
                sent += s.send_slice(&req[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|d| {
                    got.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            let s = b.sockets.get_mut::<tcp::Socket>(e);
            if s.can_send() && !pinged {
                pinged = s.send_slice(b"ping").unwrap() == 4;
            }
            while s.can_recv() {
                s.recv(|d| {
                    echoed.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            if got.ends_with(b"\n") && echoed.len() == 4 {
                break;
            }
        }
        let text = String::from_utf8(got).unwrap();
        assert!(text.ends_with(&format!("\r\n\r\n100000 {:016x}\n", want.finish())), "{text}");
        assert_eq!(echoed, b"ping");
        assert_eq!(srv.stats.bytes_in, 100_000);
    }

    #[test]
    fn oversized_and_truncated_heads_get_400_and_the_server_goes_on() {
        let (mut a, mut b) = stacks();
        let mut srv = Server::new(&mut a, 80, 1, "test");
        let h = b.tcp_socket();
        let cx = b.iface.context();
        b.sockets.get_mut::<tcp::Socket>(h).connect(cx, (IpAddress::v4(10, 0, 2, 15), 80), 42000).unwrap();
        let junk = vec![b'x'; MAX_HEAD + 10];
        let (mut sent, mut got) = (0, Vec::new());
        for t in 0..50_000u64 {
            let now = t * 1_000_000;
            a.poll(now);
            srv.poll(&mut a, now);
            a.poll(now);
            b.poll(now);
            let s = b.sockets.get_mut::<tcp::Socket>(h);
            if s.can_send() && sent < junk.len() {
                sent += s.send_slice(&junk[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|d| {
                    got.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            if !s.may_recv() && !got.is_empty() {
                s.close();
                break;
            }
        }
        assert!(got.starts_with(b"HTTP/1.0 400"), "{:?}", String::from_utf8_lossy(&got));
        assert_eq!(srv.stats.bad, 1);
        // The server serves the next client.
        assert_eq!(fetch(&mut a, &mut srv, &mut b, "/").unwrap().status, 200);
    }
}
