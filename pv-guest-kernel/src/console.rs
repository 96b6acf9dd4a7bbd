//! Kernel console output. Until the split console is connected every domain writes through
//! `console_io`, which the hypervisor line-buffers and tags with the domain id.

use core::fmt::{self, Write};

/// Writes formatted text to the console.
pub fn print(args: fmt::Arguments<'_>) {
    let mut w = Buffered { buf: [0; 256], len: 0 };
    let _ = w.write_fmt(args);
    w.flush();
}

struct Buffered {
    buf: [u8; 256],
    len: usize,
}

impl Buffered {
    fn flush(&mut self) {
        if self.len > 0 {
            if !crate::console_ring::write(&self.buf[..self.len]) {
                crate::hypercall::console_write(&self.buf[..self.len]);
            }
            self.len = 0;
        }
    }
}

impl Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
