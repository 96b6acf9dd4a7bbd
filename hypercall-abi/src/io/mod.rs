//! Shared-memory I/O protocols (`public/io/`): the generic ring and the console, xenstore,
//! block, network and random-number protocols built on it.
//!
//! Everything here is read and written by two mutually distrustful domains at the same time.
//! The types in this module therefore never hold a reference into the shared page: the
//! request/response ring ([`ring`]) goes through the [`ring::RingMemory`] trait and copies
//! each entry once, and the byte rings of the console and xenstore ([`byte_ring`]) are
//! described by pure functions over index values the caller has already copied.

pub mod blkif;
pub mod console;
pub mod netif;
pub mod ring;
pub mod rngif;
pub mod xenbus;
pub mod xs_wire;

pub use ring::{AtomicPage, BackRing, FrontRing, RingError, RingMemory, SharedRing};

/// Arithmetic of the byte rings used by the console (`xencons_interface`) and xenstore
/// (`xenstore_domain_interface`): a power-of-two buffer with free-running `u32` producer and
/// consumer indexes, `MASK_*_IDX(idx) = idx & (size - 1)`.
///
/// The indexes live in shared memory and the peer may write anything into them, so every
/// function takes them as values (read once by the caller) and treats `prod - cons > size`
/// as corrupt: such indexes yield nothing to read and no room to write, instead of letting a
/// caller copy more than the buffer holds.
pub mod byte_ring {
    /// `idx & (size - 1)`: the buffer offset of a free-running index. `size` must be a power of
    /// two.
    pub const fn mask(idx: u32, size: u32) -> usize {
        (idx & (size.wrapping_sub(1))) as usize
    }

    /// True if `cons`/`prod` describe a possible ring state (`prod - cons <= size`, with wrapping
    /// `u32` arithmetic).
    pub const fn indexes_valid(cons: u32, prod: u32, size: u32) -> bool {
        prod.wrapping_sub(cons) <= size
    }

    /// Bytes the consumer may read: `prod - cons`, or 0 if the indexes are corrupt.
    pub const fn readable(cons: u32, prod: u32, size: u32) -> u32 {
        if indexes_valid(cons, prod, size) {
            prod.wrapping_sub(cons)
        } else {
            0
        }
    }

    /// Bytes the producer may write: `size - (prod - cons)`, or 0 if the indexes are corrupt.
    pub const fn writable(cons: u32, prod: u32, size: u32) -> u32 {
        if indexes_valid(cons, prod, size) {
            size - prod.wrapping_sub(cons)
        } else {
            0
        }
    }

    /// `(offset, len)` of the contiguous run the consumer can read in one copy, starting at
    /// `mask(cons)` and ending at the buffer's end or at `prod`.
    pub const fn read_chunk(cons: u32, prod: u32, size: u32) -> (usize, usize) {
        let off = mask(cons, size);
        let avail = readable(cons, prod, size) as usize;
        let to_end = size as usize - off;
        (off, if avail < to_end { avail } else { to_end })
    }

    /// `(offset, len)` of the contiguous space the producer can fill in one copy, starting at
    /// `mask(prod)`.
    pub const fn write_chunk(cons: u32, prod: u32, size: u32) -> (usize, usize) {
        let off = mask(prod, size);
        let room = writable(cons, prod, size) as usize;
        let to_end = size as usize - off;
        (off, if room < to_end { room } else { to_end })
    }

    /// Where in the buffer the consumer finds the next `min(max, readable)` bytes: up to two
    /// `(offset, len)` runs (the second, possibly empty, after the wrap), in order.
    pub const fn read_segments(cons: u32, prod: u32, size: u32, max: usize) -> [(usize, usize); 2] {
        let avail = readable(cons, prod, size) as usize;
        segments(mask(cons, size), if avail < max { avail } else { max }, size as usize)
    }

    /// Where in the buffer the producer puts the next `min(len, writable)` bytes: up to two
    /// `(offset, len)` runs, in order.
    pub const fn write_segments(cons: u32, prod: u32, size: u32, len: usize) -> [(usize, usize); 2] {
        let room = writable(cons, prod, size) as usize;
        segments(mask(prod, size), if room < len { room } else { len }, size as usize)
    }

    const fn segments(off: usize, n: usize, size: usize) -> [(usize, usize); 2] {
        let first = if n < size - off { n } else { size - off };
        [(off, first), (0, n - first)]
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        #[test]
        fn basic_and_wrapping() {
            assert_eq!(readable(0, 0, 1024), 0);
            assert_eq!(writable(0, 0, 1024), 1024);
            assert_eq!(readable(u32::MAX - 1, 3, 1024), 5);
            assert_eq!(read_chunk(1020, 1030, 1024), (1020, 4));
            assert_eq!(read_chunk(1024, 1030, 1024), (0, 6));
            assert_eq!(write_chunk(1000, 1020, 1024), (1020, 4));
            assert_eq!(write_chunk(0, 1024, 1024), (0, 0));
        }

        #[test]
        fn hostile_indexes_give_nothing() {
            // Producer claims more than a full buffer, or the consumer ran past the producer.
            assert_eq!(readable(0, 1025, 1024), 0);
            assert_eq!(readable(10, 5, 1024), 0);
            assert_eq!(writable(10, 5, 1024), 0);
            assert_eq!(read_chunk(0, u32::MAX, 2048), (0, 0));
            assert_eq!(write_chunk(7, 3, 2048), (3, 0));
        }

        #[test]
        fn segments_split_at_the_wrap() {
            assert_eq!(write_segments(1000, 1020, 1024, 10), [(1020, 4), (0, 6)]);
            assert_eq!(write_segments(0, 1020, 1024, 10), [(1020, 4), (0, 0)]);
            assert_eq!(read_segments(1020, 1030, 1024, 100), [(1020, 4), (0, 6)]);
            assert_eq!(read_segments(1020, 1030, 1024, 3), [(1020, 3), (0, 0)]);
            assert_eq!(read_segments(0, 5000, 1024, 100), [(0, 0), (0, 0)]);
        }

        proptest! {
            #[test]
            fn segments_cover_exactly_the_transfer(cons: u32, prod: u32, shift in 0u32..13, len in 0usize..10000) {
                let size = 1u32 << shift;
                for (segs, limit) in [
                    (write_segments(cons, prod, size, len), writable(cons, prod, size)),
                    (read_segments(cons, prod, size, len), readable(cons, prod, size)),
                ] {
                    let total = segs[0].1 + segs[1].1;
                    prop_assert_eq!(total, len.min(limit as usize));
                    for (o, l) in segs {
                        prop_assert!(o + l <= size as usize);
                    }
                    // The two runs never overlap: the second starts at 0 only after a wrap.
                    prop_assert!(segs[1].1 == 0 || segs[0].0 + segs[0].1 == size as usize);
                }
            }

            #[test]
            fn chunks_stay_in_bounds(cons: u32, prod: u32, shift in 0u32..13) {
                let size = 1u32 << shift;
                let (ro, rl) = read_chunk(cons, prod, size);
                let (wo, wl) = write_chunk(cons, prod, size);
                prop_assert!(ro + rl <= size as usize);
                prop_assert!(wo + wl <= size as usize);
                prop_assert!(readable(cons, prod, size) + writable(cons, prod, size) <= size);
                if indexes_valid(cons, prod, size) {
                    prop_assert_eq!(readable(cons, prod, size) + writable(cons, prod, size), size);
                } else {
                    prop_assert_eq!((rl, wl), (0, 0));
                }
            }
        }
    }
}
