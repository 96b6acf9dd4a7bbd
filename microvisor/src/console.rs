//! The hypervisor console: its own messages, prefixed `(XEN) `, and guests' `console_io`
//! output, line-buffered per domain and prefixed with the domain (`(d1) `) so lines from
//! different domains never mix mid-line.

use heapless::Vec as HVec;

/// Longest line kept before it is flushed without a newline.
pub const LINE_MAX: usize = 240;

/// A domain's partial console line.
#[derive(Default)]
pub struct LineBuffer {
    buf: HVec<u8, LINE_MAX>,
}

impl LineBuffer {
    /// Appends `bytes`, calling `emit` with each complete line (without its newline).
    ///
    /// For unprivileged domains only printable ASCII and tabs survive, as Xen does for
    /// non-hardware domains, so a guest cannot send terminal control sequences to the console.
    pub fn push(&mut self, bytes: &[u8], printable_only: bool, mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            match b {
                b'\n' => {
                    emit(&self.buf);
                    self.buf.clear();
                }
                b'\r' => {}
                _ => {
                    let keep = !printable_only || b == b'\t' || (0x20..0x7f).contains(&b);
                    if keep && self.buf.push(b).is_err() {
                        emit(&self.buf);
                        self.buf.clear();
                        let _ = self.buf.push(b);
                    }
                }
            }
        }
    }

    /// Emits whatever is buffered (at shutdown).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], printable_only: bool) -> Vec<String> {
        let mut lb = LineBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c, printable_only, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        out
    }

    #[test]
    fn buffers_until_newline() {
        assert_eq!(lines(&[b"hel", b"lo\nwor", b"ld\n"], true), ["hello", "world"]);
        assert_eq!(lines(&[b"no newline"], true), Vec::<String>::new());
    }

    #[test]
    fn filters_control_characters_for_unprivileged() {
        assert_eq!(lines(&[b"a\x1b[2Jb\x07c\r\n"], true), ["a[2Jbc"]);
        assert_eq!(lines(&[b"a\x1bb\n"], false), ["a\x1bb"]);
    }

    #[test]
    fn long_lines_are_split() {
        let long = vec![b'x'; LINE_MAX + 10];
        let out = lines(&[&long, b"\n"], true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(out[1].len(), 10);
    }
}
