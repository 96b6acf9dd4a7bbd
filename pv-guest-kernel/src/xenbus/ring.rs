//! The byte rings of the xenstore and console pages, written once for both ends.
//!
//! A ring page is shared with another, untrusted domain that changes it while we look, so it
//! is only ever reached through [`SharedPage`]: single 32-bit atomic loads and stores for the
//! indexes and plain copies for the data, never a Rust reference into the page. Each ring is
//! one direction ([`ByteRing`]): the producer fills `buf` at `prod`, the consumer drains it at
//! `cons`, with Xen's barriers (`xenstore-ring.txt`): a consumer reads `prod`, then the data,
//! then publishes `cons`; a producer reads `cons`, writes the data, then publishes `prod`.
//! Corrupt indexes (`prod - cons > size`) move nothing, so a hostile peer can never make us
//! copy outside the buffer.
//!
//! Notifying the peer (the event-channel send that must follow every index update) is the
//! caller's job: the functions return how many bytes moved so it knows when to.

use core::sync::atomic::{fence, AtomicU32, Ordering};
use hypercall_abi::io::{byte_ring, console, xs_wire};

/// A page shared with another domain. Offsets are bytes from the page start; implementations
/// must make every index access one atomic 32-bit operation and must tolerate the peer
/// changing any byte at any time.
pub trait SharedPage {
    /// Reads the 32-bit index at `off` (acquire: later data reads are not hoisted above it).
    fn load_u32(&self, off: usize) -> u32;
    /// Writes the 32-bit index at `off` (release: earlier data accesses are done first).
    fn store_u32(&self, off: usize, v: u32);
    /// Copies `out.len()` bytes from `off`.
    fn read(&self, off: usize, out: &mut [u8]);
    /// Copies `data` to `off`.
    fn write(&self, off: usize, data: &[u8]);
    /// A full barrier between reading an index and accessing the data it guards (the `mb()`
    /// of Xen's ring protocol).
    fn fence(&self);
}

/// One direction of a byte ring: where its buffer and indexes are in the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRing {
    /// Offset of the buffer.
    pub buf: usize,
    /// Buffer size, a power of two.
    pub size: u32,
    /// Offset of the consumer index.
    pub cons: usize,
    /// Offset of the producer index.
    pub prod: usize,
}

impl ByteRing {
    /// xenstore requests, guest → xenstored.
    pub const XS_REQ: ByteRing = ByteRing {
        buf: xs_wire::REQ_OFFSET,
        size: xs_wire::XENSTORE_RING_SIZE,
        cons: xs_wire::REQ_CONS_OFFSET,
        prod: xs_wire::REQ_PROD_OFFSET,
    };
    /// xenstore replies and watch events, xenstored → guest.
    pub const XS_RSP: ByteRing = ByteRing {
        buf: xs_wire::RSP_OFFSET,
        size: xs_wire::XENSTORE_RING_SIZE,
        cons: xs_wire::RSP_CONS_OFFSET,
        prod: xs_wire::RSP_PROD_OFFSET,
    };
    /// Console output, guest → console backend.
    pub const CONS_OUT: ByteRing = ByteRing {
        buf: console::OUT_OFFSET,
        size: console::OUT_SIZE,
        cons: console::OUT_CONS_OFFSET,
        prod: console::OUT_PROD_OFFSET,
    };
    /// Console input, console backend → guest.
    pub const CONS_IN: ByteRing = ByteRing {
        buf: console::IN_OFFSET,
        size: console::IN_SIZE,
        cons: console::IN_CONS_OFFSET,
        prod: console::IN_PROD_OFFSET,
    };

    /// `(cons, prod)` as they are now.
    pub fn indexes(&self, page: &impl SharedPage) -> (u32, u32) {
        (page.load_u32(self.cons), page.load_u32(self.prod))
    }

    /// Bytes the consumer could take now (0 if the indexes are corrupt).
    pub fn readable(&self, page: &impl SharedPage) -> u32 {
        let (c, p) = self.indexes(page);
        byte_ring::readable(c, p, self.size)
    }

    /// Bytes the producer could add now (0 if the indexes are corrupt).
    pub fn writable(&self, page: &impl SharedPage) -> u32 {
        let (c, p) = self.indexes(page);
        byte_ring::writable(c, p, self.size)
    }

    /// True if the peer has put the indexes in an impossible state.
    pub fn corrupt(&self, page: &impl SharedPage) -> bool {
        let (c, p) = self.indexes(page);
        !byte_ring::indexes_valid(c, p, self.size)
    }

    /// Producer side: appends as much of `data` as fits and publishes it. Returns the bytes
    /// written (the rest must be offered again once the consumer has made room).
    pub fn produce(&self, page: &impl SharedPage, data: &[u8]) -> usize {
        let cons = page.load_u32(self.cons);
        let prod = page.load_u32(self.prod);
        page.fence();
        let mut done = 0;
        for (off, len) in byte_ring::write_segments(cons, prod, self.size, data.len()) {
            page.write(self.buf + off, &data[done..done + len]);
            done += len;
        }
        if done > 0 {
            page.store_u32(self.prod, prod.wrapping_add(done as u32));
        }
        done
    }

    /// Consumer side: copies up to `out.len()` unread bytes without consuming them. The
    /// caller decides how many it used and passes that to [`Self::advance`].
    pub fn peek(&self, page: &impl SharedPage, out: &mut [u8]) -> usize {
        let cons = page.load_u32(self.cons);
        let prod = page.load_u32(self.prod);
        page.fence();
        let mut done = 0;
        for (off, len) in byte_ring::read_segments(cons, prod, self.size, out.len()) {
            page.read(self.buf + off, &mut out[done..done + len]);
            done += len;
        }
        done
    }

    /// Consumer side: marks `n` bytes (at most what is readable) as consumed. Returns the
    /// bytes really consumed.
    pub fn advance(&self, page: &impl SharedPage, n: usize) -> usize {
        let cons = page.load_u32(self.cons);
        let prod = page.load_u32(self.prod);
        let n = n.min(byte_ring::readable(cons, prod, self.size) as usize);
        if n > 0 {
            page.fence();
            page.store_u32(self.cons, cons.wrapping_add(n as u32));
        }
        n
    }

    /// Consumer side: copies and consumes up to `out.len()` bytes.
    pub fn consume(&self, page: &impl SharedPage, out: &mut [u8]) -> usize {
        let n = self.peek(page, out);
        self.advance(page, n)
    }

    /// Sets both indexes to 0 (a reset both ends agreed on, e.g. a xenstore reconnect).
    pub fn reset(&self, page: &impl SharedPage) {
        page.store_u32(self.cons, 0);
        page.store_u32(self.prod, 0);
    }
}

/// A page mapped at a fixed virtual address (a domain's own ring page in its direct map, or
/// a peer's page mapped by dom0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedPage {
    base: usize,
}

impl MappedPage {
    /// The page at `va`.
    ///
    /// # Safety
    /// `va` must be page-aligned and stay mapped, readable and writable, for as long as the
    /// value (or a copy) is used; no Rust reference may point into the page.
    pub const unsafe fn new(va: u64) -> MappedPage {
        MappedPage { base: va as usize }
    }

    /// Its virtual address.
    pub const fn va(&self) -> u64 {
        self.base as u64
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= hypercall_abi::PAGE_SIZE, "index offset inside the page");
        // SAFETY: `new`'s contract keeps the page mapped and free of references; the offset is
        // aligned and inside it (checked above), and the peer only ever changes it as a u32,
        // so an atomic view is sound.
        unsafe { AtomicU32::from_ptr((self.base + off) as *mut u32) }
    }

    fn span(&self, off: usize, len: usize) -> usize {
        assert!(off.checked_add(len).is_some_and(|e| e <= hypercall_abi::PAGE_SIZE), "copy inside the page");
        self.base + off
    }
}

impl SharedPage for MappedPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.index(off).load(Ordering::Acquire)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.index(off).store(v, Ordering::Release)
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        let at = self.span(off, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: inside the mapped page (`span`); volatile because the peer writes the
            // page concurrently, and bytes are read once each into our own buffer.
            *o = unsafe { ((at + i) as *const u8).read_volatile() };
        }
    }
    fn write(&self, off: usize, data: &[u8]) {
        let at = self.span(off, data.len());
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: inside the mapped page (`span`), which no Rust reference covers.
            unsafe { ((at + i) as *mut u8).write_volatile(b) };
        }
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}

/// A private page standing in for shared memory, for host tests (here and in dom0, through the
/// `test-doubles` feature): interior mutability through atomics, so two "ends" can hold it at
/// once.
#[cfg(any(test, feature = "test-doubles"))]
pub mod fake {
    use super::SharedPage;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 4096 bytes of fake shared memory.
    pub struct FakePage(pub Vec<AtomicU8>);

    impl Default for FakePage {
        fn default() -> Self {
            FakePage((0..4096).map(|_| AtomicU8::new(0)).collect())
        }
    }

    impl SharedPage for FakePage {
        fn load_u32(&self, off: usize) -> u32 {
            let mut b = [0u8; 4];
            self.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn store_u32(&self, off: usize, v: u32) {
            self.write(off, &v.to_le_bytes());
        }
        fn read(&self, off: usize, out: &mut [u8]) {
            for (i, o) in out.iter_mut().enumerate() {
                *o = self.0[off + i].load(Ordering::SeqCst);
            }
        }
        fn write(&self, off: usize, data: &[u8]) {
            for (i, &b) in data.iter().enumerate() {
                self.0[off + i].store(b, Ordering::SeqCst);
            }
        }
        fn fence(&self) {}
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakePage;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_writes_never_overwrite_unread_bytes() {
        let page = FakePage::default();
        let r = ByteRing::XS_REQ;
        let big = vec![7u8; 1500];
        assert_eq!(r.produce(&page, &big), 1024);
        assert_eq!(r.produce(&page, b"more"), 0, "full ring takes nothing");
        let mut out = [0u8; 100];
        assert_eq!(r.consume(&page, &mut out), 100);
        assert_eq!(r.produce(&page, &big[1024..]), 100);
        assert_eq!(r.readable(&page), 1024);
        // The data is in order across the wrap.
        let mut all = vec![0u8; 2000];
        assert_eq!(r.consume(&page, &mut all), 1024);
        assert!(all[..1024].iter().all(|&b| b == 7));
    }

    #[test]
    fn peek_then_partial_advance() {
        let page = FakePage::default();
        let r = ByteRing::CONS_OUT;
        r.produce(&page, b"hello world");
        let mut out = [0u8; 32];
        assert_eq!(r.peek(&page, &mut out), 11);
        assert_eq!(r.advance(&page, 6), 6);
        assert_eq!(r.consume(&page, &mut out), 5);
        assert_eq!(&out[..5], b"world");
        assert_eq!(r.advance(&page, 100), 0, "cannot consume past prod");
    }

    #[test]
    fn corrupt_indexes_move_nothing() {
        let page = FakePage::default();
        let r = ByteRing::XS_RSP;
        page.store_u32(r.prod, 5000);
        assert!(r.corrupt(&page));
        let mut out = [0u8; 64];
        assert_eq!(r.consume(&page, &mut out), 0);
        assert_eq!(r.produce(&page, b"x"), 0);
        page.store_u32(r.cons, 10);
        page.store_u32(r.prod, 3);
        assert_eq!(r.consume(&page, &mut out), 0);
        assert_eq!(r.advance(&page, 1), 0);
        r.reset(&page);
        assert_eq!(r.indexes(&page), (0, 0));
    }

    #[test]
    fn the_four_rings_do_not_overlap() {
        for (a, b) in [(ByteRing::XS_REQ, ByteRing::XS_RSP), (ByteRing::CONS_IN, ByteRing::CONS_OUT)] {
            assert!(a.buf + a.size as usize <= b.buf);
            assert!(b.buf + b.size as usize <= a.cons.min(a.prod).min(b.cons).min(b.prod));
        }
    }

    #[test]
    fn mapped_page_over_real_memory() {
        // A page-aligned heap page stands in for a mapping.
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero size; freed at the end of the test.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: `p` is a live, aligned, writable page used only through `page`.
        let page = unsafe { MappedPage::new(p as u64) };
        let r = ByteRing::CONS_OUT;
        assert_eq!(r.produce(&page, b"abc"), 3);
        assert_eq!(page.load_u32(console::OUT_PROD_OFFSET), 3);
        let mut out = [0u8; 8];
        assert_eq!(r.consume(&page, &mut out), 3);
        assert_eq!(&out[..3], b"abc");
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
    }

    proptest! {
        /// Whatever the chunking and the starting index (wrap of the u32 included), the bytes
        /// come out exactly as they went in and the ring never holds more than its size.
        #[test]
        fn stream_round_trips(
            start: u32,
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            wchunks in proptest::collection::vec(1usize..700, 1..20),
            rchunks in proptest::collection::vec(1usize..700, 1..20),
        ) {
            let page = FakePage::default();
            let r = ByteRing::XS_REQ;
            page.store_u32(r.cons, start);
            page.store_u32(r.prod, start);
            let mut sent = 0;
            let mut got = Vec::new();
            let mut i = 0;
            while got.len() < data.len() {
                let w = wchunks[i % wchunks.len()];
                let end = (sent + w).min(data.len());
                sent += r.produce(&page, &data[sent..end]);
                prop_assert!(r.readable(&page) <= r.size);
                let mut buf = vec![0u8; rchunks[i % rchunks.len()]];
                let n = r.consume(&page, &mut buf);
                got.extend_from_slice(&buf[..n]);
                i += 1;
            }
            prop_assert_eq!(got, data);
        }
    }
}
