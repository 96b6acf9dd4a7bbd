//! A split virtqueue (virtio 1.x §2.7) as dom0's block driver uses it: descriptors carry
//! *machine* addresses given by the caller, so a request can point straight at frames granted
//! by a domU (device-mapped grants have no virtual address in dom0 at all) as well as at
//! dom0's own DMA buffers, and one request can gather several discontiguous pieces.
//!
//! virtio-drivers' `VirtQueue` takes `&[u8]` buffers and translates them itself, which cannot
//! express a frame dom0 never maps; this queue takes `(address, length, direction)` triples
//! instead. The queue memory is reached through [`QueueMemory`], so the logic here is plain
//! Rust tested on the host against a simulated device.
//!
//! The device is not trusted: used-ring entries are checked (a head must be one we posted and
//! not yet got back, the used index may not run ahead of what is in flight), and a device that
//! breaks the rules gets [`QueueError::DeviceBroken`] rather than corrupting our free list.

use alloc::vec;
use alloc::vec::Vec;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Driver-area flag without `VIRTIO_F_EVENT_IDX`: do not interrupt on used buffers.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Device-area flag without `VIRTIO_F_EVENT_IDX`: no need to notify.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;
/// Bytes of one used element.
pub const USED_ELEM_SIZE: usize = 8;

/// The three areas of a split queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Descriptor table: `{u64 addr; u32 len; u16 flags; u16 next}[size]`.
    Desc,
    /// Driver area: `u16 flags; u16 idx; u16 ring[size]; u16 used_event`.
    Avail,
    /// Device area: `u16 flags; u16 idx; {u32 id; u32 len} ring[size]; u16 avail_event`.
    Used,
}

/// Bytes of each area for a queue of `size` entries.
pub const fn area_bytes(area: Area, size: u16) -> usize {
    let n = size as usize;
    match area {
        Area::Desc => DESC_SIZE * n,
        Area::Avail => 6 + 2 * n,
        Area::Used => 6 + USED_ELEM_SIZE * n,
    }
}

/// Access to the queue's memory shared with the device. Implementations use volatile
/// accesses; `fence` is a full barrier. Offsets are inside the area and naturally aligned.
pub trait QueueMemory {
    fn load16(&self, area: Area, off: usize) -> u16;
    fn load32(&self, area: Area, off: usize) -> u32;
    fn store16(&self, area: Area, off: usize, v: u16);
    fn store32(&self, area: Area, off: usize, v: u32);
    fn store64(&self, area: Area, off: usize, v: u64);
    fn fence(&self);
}

/// One buffer of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Machine (bus) address.
    pub addr: u64,
    pub len: u32,
    /// The device writes it (device-to-driver).
    pub device_writes: bool,
}

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Not enough free descriptors now; retry after completions.
    Full,
    /// An empty chain, a zero-length buffer, or a chain longer than the queue.
    Invalid,
    /// The device returned a head we did not post (or posted and already got back), or moved
    /// the used index further than what is in flight.
    DeviceBroken,
}

/// `vring_need_event`: did moving the index from `old` to `new` pass `event`?
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver's side of one split queue.
#[derive(Debug)]
pub struct Virtq {
    size: u16,
    event_idx: bool,
    /// Our copy of each descriptor's `next` (the device may scribble on the table).
    next: Vec<u16>,
    /// For a head we posted and did not get back: its chain length; 0 otherwise.
    chain_len: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// Our avail index (published or not).
    avail_idx: u16,
    /// The avail index the device last saw.
    avail_published: u16,
    last_used: u16,
    in_flight: u16,
}

impl Virtq {
    /// A queue of `size` entries (a power of two, at most 32768) over freshly zeroed memory;
    /// writes the descriptor links. `event_idx` says whether `VIRTIO_F_EVENT_IDX` was
    /// negotiated.
    pub fn new<M: QueueMemory + ?Sized>(mem: &M, size: u16, event_idx: bool) -> Option<Virtq> {
        if !size.is_power_of_two() || size > 0x8000 {
            return None;
        }
        let next: Vec<u16> = (1..=size).map(|i| i % size).collect();
        for (i, &n) in next.iter().enumerate() {
            mem.store16(Area::Desc, i * DESC_SIZE + 14, n);
        }
        Some(Virtq {
            size,
            event_idx,
            next,
            chain_len: vec![0; size as usize],
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            avail_published: 0,
            last_used: 0,
            in_flight: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// Chains posted and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Writes a chain for `segs` (device-readable ones should come first, as virtio-blk
    /// wants) and puts it in the avail ring, unpublished until [`publish`](Self::publish).
    /// Returns the head, the chain's token.
    pub fn add<M: QueueMemory + ?Sized>(&mut self, mem: &M, segs: &[Seg]) -> Result<u16, QueueError> {
        if segs.is_empty() || segs.len() > self.size as usize || segs.iter().any(|s| s.len == 0) {
            return Err(QueueError::Invalid);
        }
        let n = segs.len() as u16;
        if n > self.num_free {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let mut flags = if s.device_writes { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let base = idx as usize * DESC_SIZE;
            mem.store64(Area::Desc, base, s.addr);
            mem.store32(Area::Desc, base + 8, s.len);
            mem.store16(Area::Desc, base + 12, flags);
            mem.store16(Area::Desc, base + 14, self.next[idx as usize]);
            if !last {
                idx = self.next[idx as usize];
            }
        }
        self.free_head = self.next[idx as usize];
        self.num_free -= n;
        self.chain_len[head as usize] = n;
        self.in_flight += 1;
        let slot = (self.avail_idx & (self.size - 1)) as usize;
        mem.store16(Area::Avail, 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Makes the chains added since the last call visible to the device; returns true if the
    /// device must be notified.
    pub fn publish<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> bool {
        let old = self.avail_published;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        // Descriptors and ring entries before the index; the index before reading the
        // device's suppression state.
        mem.fence();
        mem.store16(Area::Avail, 2, new);
        self.avail_published = new;
        mem.fence();
        if self.event_idx {
            let avail_event = mem.load16(Area::Used, 4 + USED_ELEM_SIZE * self.size as usize);
            need_event(avail_event, new, old)
        } else {
            mem.load16(Area::Used, 0) & USED_F_NO_NOTIFY == 0
        }
    }

    /// True if the device has returned chains we have not popped.
    pub fn has_used<M: QueueMemory + ?Sized>(&self, mem: &M) -> bool {
        mem.load16(Area::Used, 2) != self.last_used
    }

    /// Takes the next used chain: `(head, bytes written by the device)`, and frees its
    /// descriptors.
    pub fn pop_used<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<(u16, u32)>, QueueError> {
        let used_idx = mem.load16(Area::Used, 2);
        if used_idx == self.last_used {
            return Ok(None);
        }
        if used_idx.wrapping_sub(self.last_used) > self.in_flight {
            return Err(QueueError::DeviceBroken);
        }
        // The element after the index (the load above is an acquire in the implementation).
        mem.fence();
        let slot = (self.last_used & (self.size - 1)) as usize;
        let id = mem.load32(Area::Used, 4 + USED_ELEM_SIZE * slot);
        let len = mem.load32(Area::Used, 4 + USED_ELEM_SIZE * slot + 4);
        let head = u16::try_from(id).map_err(|_| QueueError::DeviceBroken)?;
        let n = *self.chain_len.get(head as usize).ok_or(QueueError::DeviceBroken)?;
        if n == 0 {
            return Err(QueueError::DeviceBroken);
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.chain_len[head as usize] = 0;
        // Walk our own copy of the links: the chain's tail goes back on the free list.
        let mut tail = head;
        for _ in 1..n {
            tail = self.next[tail as usize];
        }
        self.next[tail as usize] = self.free_head;
        mem.store16(Area::Desc, tail as usize * DESC_SIZE + 14, self.free_head);
        self.free_head = head;
        self.num_free += n;
        self.in_flight -= 1;
        if self.event_idx {
            mem.store16(Area::Avail, 4 + 2 * self.size as usize, self.last_used);
        }
        Ok(Some((head, len)))
    }

    /// Asks the device to interrupt on the next used chain, then re-checks: returns true if
    /// chains arrived meanwhile (keep popping instead of waiting).
    pub fn enable_interrupts<M: QueueMemory + ?Sized>(&mut self, mem: &M) -> bool {
        if self.event_idx {
            mem.store16(Area::Avail, 4 + 2 * self.size as usize, self.last_used);
        } else {
            mem.store16(Area::Avail, 0, 0);
        }
        mem.fence();
        self.has_used(mem)
    }

    /// Asks the device not to interrupt (a hint; the driver polls meanwhile).
    pub fn disable_interrupts<M: QueueMemory + ?Sized>(&mut self, mem: &M) {
        if !self.event_idx {
            mem.store16(Area::Avail, 0, AVAIL_F_NO_INTERRUPT);
        }
    }
}

#[cfg(test)]
pub(crate) mod sim {
    //! Queue memory in a host buffer and a simulated device that serves chains.
    use super::*;
    use std::cell::RefCell;

    pub struct SimMem {
        pub desc: RefCell<Vec<u8>>,
        pub avail: RefCell<Vec<u8>>,
        pub used: RefCell<Vec<u8>>,
    }

    impl SimMem {
        pub fn new(size: u16) -> SimMem {
            SimMem {
                desc: RefCell::new(vec![0; area_bytes(Area::Desc, size)]),
                avail: RefCell::new(vec![0; area_bytes(Area::Avail, size)]),
                used: RefCell::new(vec![0; area_bytes(Area::Used, size)]),
            }
        }
        fn area(&self, a: Area) -> &RefCell<Vec<u8>> {
            match a {
                Area::Desc => &self.desc,
                Area::Avail => &self.avail,
                Area::Used => &self.used,
            }
        }
        fn load<const N: usize>(&self, a: Area, off: usize) -> [u8; N] {
            self.area(a).borrow()[off..off + N].try_into().unwrap()
        }
        fn store(&self, a: Area, off: usize, b: &[u8]) {
            self.area(a).borrow_mut()[off..off + b.len()].copy_from_slice(b);
        }
    }

    impl QueueMemory for SimMem {
        fn load16(&self, a: Area, off: usize) -> u16 {
            u16::from_le_bytes(self.load(a, off))
        }
        fn load32(&self, a: Area, off: usize) -> u32 {
            u32::from_le_bytes(self.load(a, off))
        }
        fn store16(&self, a: Area, off: usize, v: u16) {
            self.store(a, off, &v.to_le_bytes())
        }
        fn store32(&self, a: Area, off: usize, v: u32) {
            self.store(a, off, &v.to_le_bytes())
        }
        fn store64(&self, a: Area, off: usize, v: u64) {
            self.store(a, off, &v.to_le_bytes())
        }
        fn fence(&self) {}
    }

    /// A device that reads avail entries and returns chains when told to.
    pub struct SimDevice {
        pub size: u16,
        pub last_avail: u16,
        pub used_idx: u16,
        /// Chains taken from the avail ring, not yet returned: (head, segments).
        pub pending: Vec<(u16, Vec<Seg>)>,
    }

    impl SimDevice {
        pub fn new(size: u16) -> SimDevice {
            SimDevice { size, last_avail: 0, used_idx: 0, pending: Vec::new() }
        }

        /// Takes every newly published chain, following `next` links (bounded, as a real
        /// device must be).
        pub fn fetch(&mut self, m: &SimMem) {
            let idx = m.load16(Area::Avail, 2);
            while self.last_avail != idx {
                let slot = (self.last_avail % self.size) as usize;
                let head = m.load16(Area::Avail, 4 + 2 * slot);
                let mut segs = Vec::new();
                let mut d = head;
                for _ in 0..self.size {
                    let b = d as usize * DESC_SIZE;
                    let flags = m.load16(Area::Desc, b + 12);
                    segs.push(Seg {
                        addr: u64::from_le_bytes(m.load(Area::Desc, b)),
                        len: m.load32(Area::Desc, b + 8),
                        device_writes: flags & DESC_F_WRITE != 0,
                    });
                    if flags & DESC_F_NEXT == 0 {
                        break;
                    }
                    d = m.load16(Area::Desc, b + 14);
                }
                self.pending.push((head, segs));
                self.last_avail = self.last_avail.wrapping_add(1);
            }
        }

        /// Returns pending chain `i` with `len` bytes written.
        pub fn complete(&mut self, m: &SimMem, i: usize, len: u32) -> (u16, Vec<Seg>) {
            let (head, segs) = self.pending.remove(i);
            self.push_used(m, u32::from(head), len);
            (head, segs)
        }

        /// Writes any used element, honest or not.
        pub fn push_used(&mut self, m: &SimMem, id: u32, len: u32) {
            let slot = (self.used_idx % self.size) as usize;
            m.store32(Area::Used, 4 + 8 * slot, id);
            m.store32(Area::Used, 4 + 8 * slot + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            m.store16(Area::Used, 2, self.used_idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::*;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn seg(addr: u64, len: u32, w: bool) -> Seg {
        Seg { addr, len, device_writes: w }
    }

    #[test]
    fn chains_reach_the_device_in_order_with_flags() {
        let m = SimMem::new(8);
        let mut q = Virtq::new(&m, 8, false).unwrap();
        let mut dev = SimDevice::new(8);
        let a = [seg(0x1000, 16, false), seg(0x20000, 4096, true), seg(0x3000, 1, true)];
        let h = q.add(&m, &a).unwrap();
        assert_eq!(q.num_free(), 5);
        dev.fetch(&m);
        assert!(dev.pending.is_empty(), "nothing visible before publish");
        assert!(q.publish(&m), "notify when the device did not suppress it");
        dev.fetch(&m);
        assert_eq!(dev.pending, vec![(h, a.to_vec())]);
        assert!(!q.has_used(&m));
        dev.complete(&m, 0, 4097);
        assert_eq!(q.pop_used(&m), Ok(Some((h, 4097))));
        assert_eq!(q.pop_used(&m), Ok(None));
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
    }

    #[test]
    fn full_and_invalid_requests() {
        let m = SimMem::new(4);
        let mut q = Virtq::new(&m, 4, false).unwrap();
        assert_eq!(q.add(&m, &[]), Err(QueueError::Invalid));
        assert_eq!(q.add(&m, &[seg(1, 0, false)]), Err(QueueError::Invalid));
        assert_eq!(q.add(&m, &[seg(1, 1, false); 5]), Err(QueueError::Invalid));
        q.add(&m, &[seg(1, 1, false); 3]).unwrap();
        assert_eq!(q.add(&m, &[seg(1, 1, false); 2]), Err(QueueError::Full));
        assert!(q.add(&m, &[seg(1, 1, false)]).is_ok());
        assert!(Virtq::new(&m, 3, false).is_none());
    }

    #[test]
    fn event_idx_suppresses_notifications_and_interrupts() {
        let m = SimMem::new(8);
        let mut q = Virtq::new(&m, 8, true).unwrap();
        // The device asks to be notified when avail passes index 0 (its avail_event = 0).
        q.add(&m, &[seg(1, 1, false)]).unwrap();
        assert!(q.publish(&m));
        // Device says: only wake me after index 5.
        m.store16(Area::Used, 4 + 8 * 8, 5);
        q.add(&m, &[seg(1, 1, false)]).unwrap();
        assert!(!q.publish(&m));
        for _ in 0..4 {
            q.add(&m, &[seg(1, 1, false)]).unwrap();
        }
        assert!(q.publish(&m), "crossing the event index notifies");
        assert!(!q.publish(&m), "nothing new: no notification");
        let mut dev = SimDevice::new(8);
        dev.fetch(&m);
        dev.complete(&m, 0, 0);
        q.pop_used(&m).unwrap().unwrap();
        assert_eq!(m.load16(Area::Avail, 4 + 2 * 8), 1, "used_event follows what we consumed");
        assert!(!q.enable_interrupts(&m));
        dev.complete(&m, 0, 0);
        assert!(q.enable_interrupts(&m), "a completion that raced the enable is seen");
    }

    #[test]
    fn a_lying_device_is_caught() {
        let m = SimMem::new(8);
        let mut q = Virtq::new(&m, 8, false).unwrap();
        let mut dev = SimDevice::new(8);
        let h = q.add(&m, &[seg(1, 1, false), seg(2, 1, true)]).unwrap();
        q.publish(&m);
        // A head we never posted (descriptor 1 is the middle of the chain).
        dev.push_used(&m, 1, 0);
        assert_eq!(q.pop_used(&m), Err(QueueError::DeviceBroken));
        // Out of range.
        let m = SimMem::new(8);
        let mut q = Virtq::new(&m, 8, false).unwrap();
        let mut dev = SimDevice::new(8);
        q.add(&m, &[seg(1, 1, false)]).unwrap();
        q.publish(&m);
        dev.push_used(&m, 70000, 0);
        assert_eq!(q.pop_used(&m), Err(QueueError::DeviceBroken));
        // The same head twice, and the used index running ahead.
        let m = SimMem::new(8);
        let mut q = Virtq::new(&m, 8, false).unwrap();
        let mut dev = SimDevice::new(8);
        let h2 = q.add(&m, &[seg(1, 1, false)]).unwrap();
        q.publish(&m);
        dev.push_used(&m, u32::from(h2), 0);
        dev.push_used(&m, u32::from(h2), 0);
        assert_eq!(q.pop_used(&m), Err(QueueError::DeviceBroken), "two used for one in flight");
        let _ = h;
    }

    proptest! {
        /// Any interleaving of adds and out-of-order completions: every chain comes back once,
        /// with exactly its segments, and the free list is whole at the end.
        #[test]
        fn chains_come_back_exactly_once(
            ops in proptest::collection::vec((1usize..5, any::<bool>(), any::<u16>()), 1..200),
            event_idx: bool,
        ) {
            let size = 16u16;
            let m = SimMem::new(size);
            let mut q = Virtq::new(&m, size, event_idx).unwrap();
            let mut dev = SimDevice::new(size);
            let mut posted: BTreeMap<u16, Vec<Seg>> = BTreeMap::new();
            let mut serial = 0u64;
            for (nsegs, complete, pick) in ops {
                if complete && !dev.pending.is_empty() {
                    let i = pick as usize % dev.pending.len();
                    let (head, segs) = dev.complete(&m, i, 7);
                    prop_assert_eq!(q.pop_used(&m), Ok(Some((head, 7))));
                    prop_assert_eq!(posted.remove(&head), Some(segs));
                } else {
                    let segs: Vec<Seg> = (0..nsegs).map(|i| { serial += 1; seg(serial << 12, 512 * (i as u32 + 1), i % 2 == 1) }).collect();
                    match q.add(&m, &segs) {
                        Ok(h) => { prop_assert!(posted.insert(h, segs).is_none()); }
                        Err(QueueError::Full) => prop_assert!(usize::from(q.num_free()) < nsegs),
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                    q.publish(&m);
                    dev.fetch(&m);
                }
            }
            while !dev.pending.is_empty() {
                let (head, segs) = dev.complete(&m, 0, 0);
                prop_assert_eq!(q.pop_used(&m).unwrap().map(|x| x.0), Some(head));
                prop_assert_eq!(posted.remove(&head), Some(segs));
            }
            prop_assert!(posted.is_empty());
            prop_assert_eq!((q.num_free(), q.in_flight()), (size, 0));
        }

        /// Garbage in the used ring never panics, never hands back a head twice, and never
        /// returns one that is not in flight.
        #[test]
        fn garbage_used_entries_are_harmless(junk in proptest::collection::vec((any::<u32>(), any::<u16>()), 1..40)) {
            let size = 8u16;
            let m = SimMem::new(size);
            let mut q = Virtq::new(&m, size, false).unwrap();
            let mut outstanding = std::collections::BTreeSet::new();
            for _ in 0..4 {
                outstanding.insert(q.add(&m, &[seg(1, 1, false), seg(2, 2, true)]).unwrap());
            }
            q.publish(&m);
            let mut used_idx = 0u16;
            for (id, step) in junk {
                let slot = (used_idx % size) as usize;
                m.store32(Area::Used, 4 + 8 * slot, id);
                used_idx = used_idx.wrapping_add(step % 3);
                m.store16(Area::Used, 2, used_idx);
                if let Ok(Some((h, _))) = q.pop_used(&m) {
                    prop_assert!(outstanding.remove(&h));
                }
                prop_assert_eq!(usize::from(q.in_flight()), outstanding.len());
            }
        }
    }
}
