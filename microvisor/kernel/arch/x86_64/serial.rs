//! The COM1 UART: the hypervisor console, and the place test harnesses read from.

use super::cpu::{inb, outb};

/// The console port.
pub const COM1: u16 = 0x3f8;
/// The trace port (binary records for `cargo xtask trace`).
pub const COM2: u16 = 0x2f8;

/// Programs COM1 and COM2 for 115200 8N1 with FIFOs.
pub fn init() {
    for port in [COM1, COM2] {
        outb(port + 1, 0x00); // no interrupts
        outb(port + 3, 0x80); // DLAB
        outb(port, 0x01); // divisor 1: 115200 baud
        outb(port + 1, 0x00);
        outb(port + 3, 0x03); // 8N1
        outb(port + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
        outb(port + 4, 0x03); // DTR, RTS
    }
}

/// Writes bytes unchanged (no newline translation) to `port`.
pub fn write_raw(port: u16, bytes: &[u8]) {
    for &b in bytes {
        while inb(port + 5) & 0x20 == 0 {}
        outb(port, b);
    }
}

/// Writes bytes, waiting for the transmitter as needed.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

fn put(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {}
    outb(COM1, b);
}

/// Returns a received byte, if any.
pub fn try_read() -> Option<u8> {
    (inb(COM1 + 5) & 1 != 0).then(|| inb(COM1))
}
