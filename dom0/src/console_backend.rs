//! The console backend's logic (what xenconsoled does for each domain): drain the guest's
//! `out` ring, cut it into lines, make each line safe for the machine console, and push
//! input into the guest's `in` ring.
//!
//! A guest's output is hostile text: bytes outside printable ASCII become `.` (so no escape
//! sequence reaches the serial console), a line is cut at [`LINE_MAX`] bytes, and one call
//! drains at most [`DRAIN_MAX`] bytes so a guest that never stops writing cannot keep dom0
//! from its other work.

use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::console;
use hypercall_abi::DomId;
use pv_guest_kernel::xenbus::ring::{ByteRing, SharedPage};

/// Longest line kept before it is emitted anyway.
pub const LINE_MAX: usize = 256;
/// Bytes one [`drain`] takes at most.
pub const DRAIN_MAX: usize = 8192;

/// One domain's console output, between the ring and whole lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLog {
    name: String,
    line: Vec<u8>,
    /// Bytes taken from the ring so far.
    pub bytes: u64,
    /// Lines emitted so far.
    pub lines: u64,
}

impl ConsoleLog {
    /// A log for the domain called `name` (the tag of its lines; sanitised like output).
    pub fn new(name: &str) -> ConsoleLog {
        let name: String = name.bytes().take(32).map(printable).collect();
        ConsoleLog { name, line: Vec::new(), bytes: 0, lines: 0 }
    }

    /// The tag.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes output bytes; `emit` gets each complete line (without its newline).
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&str)) {
        self.bytes += bytes.len() as u64;
        for &b in bytes {
            match b {
                b'\n' => self.emit_line(&mut emit),
                b'\r' => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= LINE_MAX {
                        self.emit_line(&mut emit);
                    }
                }
            }
        }
    }

    /// Emits a pending partial line (the domain is going away).
    pub fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if !self.line.is_empty() {
            self.emit_line(&mut emit);
        }
    }

    fn emit_line(&mut self, emit: &mut impl FnMut(&str)) {
        let s: String = self.line.iter().map(|&b| printable(b)).collect();
        self.line.clear();
        self.lines += 1;
        emit(&s);
    }
}

/// Printable ASCII as is, a tab as a space, anything else as `.`.
fn printable(b: u8) -> char {
    match b {
        b'\t' => ' ',
        0x20..=0x7e => b as char,
        _ => '.',
    }
}

/// Drains up to [`DRAIN_MAX`] bytes of the guest's `out` ring into `log`. Returns `(taken,
/// more)`: the bytes consumed (notify the guest if any) and whether output remains.
pub fn drain(page: &impl SharedPage, log: &mut ConsoleLog, mut emit: impl FnMut(&str)) -> (usize, bool) {
    let mut buf = [0u8; 512];
    let mut taken = 0;
    while taken < DRAIN_MAX {
        let n = ByteRing::CONS_OUT.consume(page, &mut buf);
        if n == 0 {
            return (taken, false);
        }
        taken += n;
        log.feed(&buf[..n], &mut emit);
    }
    (taken, ByteRing::CONS_OUT.readable(page) > 0)
}

/// Puts as much of `bytes` as fits into the guest's `in` ring; returns the bytes queued
/// (notify the guest if any).
pub fn push_input(page: &impl SharedPage, bytes: &[u8]) -> usize {
    ByteRing::CONS_IN.produce(page, bytes)
}

/// Parses `conin=<domid>:<text>`: the target and the bytes to send (underscores become
/// spaces, as the command line cannot hold them; a newline is added).
pub fn parse_console_input(v: &str) -> Option<(DomId, Vec<u8>)> {
    let (id, text) = v.split_once(':')?;
    let id = id.parse::<u16>().ok().filter(|&d| d != 0)?;
    let mut bytes: Vec<u8> = text.bytes().map(|b| if b == b'_' { b' ' } else { b }).collect();
    bytes.push(b'\n');
    Some((DomId(id), bytes))
}

/// Marks the ring as served (`connection` = XENCONSOLE_CONNECTED, for guests that look).
pub fn mark_connected(page: &impl SharedPage) {
    // `connection` is a byte followed by padding, so the aligned word holding it is ours to
    // write whole.
    page.store_u32(console::CONNECTION_OFFSET, u32::from(console::connection::XENCONSOLE_CONNECTED));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_guest_kernel::xenbus::ring::fake::FakePage;

    fn collect(log: &mut ConsoleLog, page: &FakePage) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let (_, more) = drain(page, log, |l| lines.push(String::from(l)));
        (lines, more)
    }

    #[test]
    fn lines_across_drains() {
        let page = FakePage::default();
        let mut log = ConsoleLog::new("domU");
        ByteRing::CONS_OUT.produce(&page, b"hello\r\nwor");
        assert_eq!(collect(&mut log, &page).0, ["hello"]);
        ByteRing::CONS_OUT.produce(&page, b"ld\n\n");
        assert_eq!(collect(&mut log, &page).0, ["world", ""]);
        ByteRing::CONS_OUT.produce(&page, b"tail");
        assert!(collect(&mut log, &page).0.is_empty());
        let mut out = Vec::new();
        log.flush(|l| out.push(String::from(l)));
        assert_eq!(out, ["tail"]);
        assert_eq!((log.bytes, log.lines), (18, 4));
    }

    #[test]
    fn hostile_output_is_defused() {
        let page = FakePage::default();
        let mut log = ConsoleLog::new("ev\x1bil\nname");
        assert_eq!(log.name(), "ev.il.name");
        ByteRing::CONS_OUT.produce(&page, b"\x1b[2J\x07bell\tx\xff\n");
        assert_eq!(collect(&mut log, &page).0, [".[2J.bell x."]);
        // An endless line is cut.
        let long = [b'a'; 600];
        ByteRing::CONS_OUT.produce(&page, &long);
        let (lines, _) = collect(&mut log, &page);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == LINE_MAX));
    }

    #[test]
    fn drain_is_bounded() {
        let page = FakePage::default();
        let mut log = ConsoleLog::new("d");
        let mut total = 0;
        let mut passes = 0;
        // Keep the ring full: each pass takes at most DRAIN_MAX.
        loop {
            while ByteRing::CONS_OUT.produce(&page, b"0123456789abcdef") > 0 {}
            let (n, more) = drain(&page, &mut log, |_| {});
            assert!(n <= DRAIN_MAX);
            total += n;
            passes += 1;
            if passes > 10 {
                assert!(more || n < DRAIN_MAX);
                break;
            }
        }
        assert!(total > 2 * console::OUT_SIZE as usize);
    }

    #[test]
    fn input_respects_room() {
        let page = FakePage::default();
        assert_eq!(push_input(&page, &[b'x'; 2000]), console::IN_SIZE as usize);
        assert_eq!(push_input(&page, b"y"), 0);
        let mut buf = [0u8; 10];
        assert_eq!(ByteRing::CONS_IN.consume(&page, &mut buf), 10);
        assert_eq!(push_input(&page, b"hello"), 5);
        mark_connected(&page);
        assert_eq!(page.load_u32(console::CONNECTION_OFFSET), 0);
    }

    #[test]
    fn console_input_option() {
        assert_eq!(parse_console_input("1:hello_there"), Some((DomId(1), b"hello there\n".to_vec())));
        assert_eq!(parse_console_input("7:"), Some((DomId(7), b"\n".to_vec())));
        for bad in ["", "1", "x:hi", "0:hi", "70000:hi", "-1:hi"] {
            assert_eq!(parse_console_input(bad), None, "{bad:?}");
        }
    }

    /// The whole page as bytes.
    fn snapshot(page: &FakePage) -> Vec<u8> {
        let mut v = alloc::vec![0u8; 4096];
        page.read(0, &mut v);
        v
    }

    proptest::proptest! {
        /// A guest rewriting its console page at will (text, indexes, anything) between
        /// drains: a drain takes at most DRAIN_MAX bytes, emits only printable lines of at most
        /// LINE_MAX, and writes nothing in the page but the output ring's consumer index;
        /// input is only ever written into the input ring and its producer index.
        #[test]
        fn survives_a_scribbling_guest(steps in proptest::collection::vec(
            (0u16..4096, proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64), proptest::prelude::any::<u32>(), 0u8..4),
            1..60,
        )) {
            let page = FakePage::default();
            let mut log = ConsoleLog::new("g");
            for (off, bytes, v, what) in steps {
                match what {
                    0 => page.write(usize::from(off), &bytes[..bytes.len().min(4096 - usize::from(off))]),
                    1 => page.store_u32(ByteRing::CONS_OUT.prod, v),
                    2 => page.store_u32(ByteRing::CONS_OUT.cons, v),
                    _ => page.store_u32(ByteRing::CONS_IN.cons, v),
                }
                let before = snapshot(&page);
                let mut lines = Vec::new();
                let (taken, _) = drain(&page, &mut log, |l| lines.push(String::from(l)));
                proptest::prop_assert!(taken <= DRAIN_MAX);
                for l in &lines {
                    proptest::prop_assert!(l.len() <= LINE_MAX && l.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                }
                let cons = ByteRing::CONS_OUT.cons..ByteRing::CONS_OUT.cons + 4;
                for (i, (b, a)) in before.iter().zip(snapshot(&page)).enumerate() {
                    proptest::prop_assert!(*b == a || cons.contains(&i), "drain wrote byte {:#x}", i);
                }
                let before = snapshot(&page);
                push_input(&page, &bytes);
                let room = ByteRing::CONS_IN.buf..ByteRing::CONS_IN.buf + ByteRing::CONS_IN.size as usize;
                let prod = ByteRing::CONS_IN.prod..ByteRing::CONS_IN.prod + 4;
                for (i, (b, a)) in before.iter().zip(snapshot(&page)).enumerate() {
                    proptest::prop_assert!(*b == a || room.contains(&i) || prod.contains(&i), "input wrote byte {:#x}", i);
                }
            }
        }

        #[test]
        fn emitted_text_is_always_printable(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let mut log = ConsoleLog::new("p");
            let mut out = Vec::new();
            log.feed(&bytes, |l| out.push(String::from(l)));
            log.flush(|l| out.push(String::from(l)));
            for l in &out {
                proptest::prop_assert!(l.len() <= LINE_MAX);
                proptest::prop_assert!(l.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            }
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
            proptest::prop_assert!(out.len() >= newlines);
        }
    }
}
