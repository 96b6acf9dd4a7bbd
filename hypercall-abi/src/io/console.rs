//! The PV console ring (`public/io/console.h`): a page with two byte rings, `out` (guest to
//! console backend) and `in` (backend to guest), shared with the console daemon in dom0.
//!
//! The indexes are written by the other side, so the helpers here take them as values and
//! clamp: corrupt indexes give zero bytes to move, never a length larger than the buffer.

use super::byte_ring;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Bytes of the `in` ring (backend to guest).
pub const IN_SIZE: u32 = 1024;
/// Bytes of the `out` ring (guest to backend).
pub const OUT_SIZE: u32 = 2048;

/// `connection` values: whether a backend services the ring.
pub mod connection {
    /// The backend has connected and drains `out`.
    pub const XENCONSOLE_CONNECTED: u8 = 0;
    /// Set by the domain builder; a guest may use `console_io` until it changes.
    pub const XENCONSOLE_DISCONNECTED: u8 = 1;
}

/// `struct xencons_interface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenconsInterface {
    /// Input to the guest (Xen's field is `in`).
    pub in_: [u8; IN_SIZE as usize],
    /// Output from the guest.
    pub out: [u8; OUT_SIZE as usize],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
    /// [`connection`] value (Xen 4.21+; zero, "connected", on older builders).
    pub connection: u8,
    pub _pad: [u8; 3],
}
assert_layout!(
    XenconsInterface,
    size = 3092,
    in_ = 0,
    out = 1024,
    in_cons = 3072,
    in_prod = 3076,
    out_cons = 3080,
    out_prod = 3084,
    connection = 3088
);

impl Default for XenconsInterface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Byte offset of `in` in the page.
pub const IN_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_);
/// Byte offset of `out` in the page.
pub const OUT_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out);
/// Byte offset of `in_cons`.
pub const IN_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_cons);
/// Byte offset of `in_prod`.
pub const IN_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_prod);
/// Byte offset of `out_cons`.
pub const OUT_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_cons);
/// Byte offset of `out_prod`.
pub const OUT_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_prod);
/// Byte offset of `connection`.
pub const CONNECTION_OFFSET: usize = core::mem::offset_of!(XenconsInterface, connection);

/// `MASK_XENCONS_IDX(idx, in)`.
pub const fn mask_in(idx: u32) -> usize {
    byte_ring::mask(idx, IN_SIZE)
}

/// `MASK_XENCONS_IDX(idx, out)`.
pub const fn mask_out(idx: u32) -> usize {
    byte_ring::mask(idx, OUT_SIZE)
}

/// Bytes the guest may write to `out` (0 if the indexes are corrupt).
pub const fn out_writable(out_cons: u32, out_prod: u32) -> u32 {
    byte_ring::writable(out_cons, out_prod, OUT_SIZE)
}

/// Bytes the backend may read from `out` (0 if the indexes are corrupt).
pub const fn out_readable(out_cons: u32, out_prod: u32) -> u32 {
    byte_ring::readable(out_cons, out_prod, OUT_SIZE)
}

/// Bytes the backend may write to `in` (0 if the indexes are corrupt).
pub const fn in_writable(in_cons: u32, in_prod: u32) -> u32 {
    byte_ring::writable(in_cons, in_prod, IN_SIZE)
}

/// Bytes the guest may read from `in` (0 if the indexes are corrupt).
pub const fn in_readable(in_cons: u32, in_prod: u32) -> u32 {
    byte_ring::readable(in_cons, in_prod, IN_SIZE)
}

/// Where in `out` the guest puts the next `min(len, out_writable)` bytes: up to two
/// `(offset in out, len)` runs.
pub const fn out_write_segments(out_cons: u32, out_prod: u32, len: usize) -> [(usize, usize); 2] {
    byte_ring::write_segments(out_cons, out_prod, OUT_SIZE, len)
}

/// Where in `out` the backend finds the next `min(max, out_readable)` bytes.
pub const fn out_read_segments(out_cons: u32, out_prod: u32, max: usize) -> [(usize, usize); 2] {
    byte_ring::read_segments(out_cons, out_prod, OUT_SIZE, max)
}

/// Where in `in` the backend puts the next `min(len, in_writable)` bytes.
pub const fn in_write_segments(in_cons: u32, in_prod: u32, len: usize) -> [(usize, usize); 2] {
    byte_ring::write_segments(in_cons, in_prod, IN_SIZE, len)
}

/// Where in `in` the guest finds the next `min(max, in_readable)` bytes.
pub const fn in_read_segments(in_cons: u32, in_prod: u32, max: usize) -> [(usize, usize); 2] {
    byte_ring::read_segments(in_cons, in_prod, IN_SIZE, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest writes through `out` and a backend drains it, in a private copy of the page,
    /// across the wrap of the 2048-byte buffer and of the u32 indexes.
    #[test]
    fn out_ring_transfers_across_wrap() {
        let mut page = XenconsInterface::default();
        let start = u32::MAX - 100;
        page.out_cons = start;
        page.out_prod = start;
        let mut sent = 0u32;
        let mut received = 0u32;
        for round in 0..50u32 {
            let msg = [round as u8; 300];
            let segs = out_write_segments(page.out_cons, page.out_prod, msg.len());
            let mut done = 0;
            for (off, len) in segs {
                page.out[off..off + len].copy_from_slice(&msg[done..done + len]);
                done += len;
            }
            page.out_prod = page.out_prod.wrapping_add(done as u32);
            sent += done as u32;
            for (off, len) in out_read_segments(page.out_cons, page.out_prod, 512) {
                assert!(page.out[off..off + len].iter().all(|&b| b as u32 <= round));
                page.out_cons = page.out_cons.wrapping_add(len as u32);
                received += len as u32;
            }
        }
        received += out_readable(page.out_cons, page.out_prod);
        assert_eq!(sent, received);
        assert!(page.out_prod.wrapping_sub(start) > 4096, "the test wrapped the buffer");
    }

    #[test]
    fn hostile_indexes_are_clamped() {
        assert_eq!(out_readable(0, OUT_SIZE + 1), 0);
        assert_eq!(out_writable(5, 0), 0);
        assert_eq!(in_readable(0, IN_SIZE), IN_SIZE);
        assert_eq!(in_writable(0, IN_SIZE), 0);
        assert_eq!(in_read_segments(3, 2, 100), [(3, 0), (0, 0)]);
        assert_eq!(mask_in(1025), 1);
        assert_eq!(mask_out(2049), 1);
        assert_eq!(CONNECTION_OFFSET, 3088);
    }
}
