//! Fake machine memory for host tests: a `Vec` of frames behind a `RefCell`, with simple
//! frame allocation. Tests build page tables, grant tables and rings in it and run the real
//! core logic over them.

use super::{FrameAllocator, MachineMemory};
use hypercall_abi::{DomId, Mfn, PAGE_SIZE};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// `frames` frames of zeroed memory.
pub struct FakeMemory {
    bytes: RefCell<Vec<u8>>,
    frames: u64,
    /// Frames not yet handed out, lowest first.
    free: RefCell<Vec<Mfn>>,
    /// Owner of each allocated frame.
    pub owners: RefCell<BTreeMap<Mfn, DomId>>,
}

impl FakeMemory {
    /// Memory of `frames` frames; frames `reserved..frames` are free for allocation.
    pub fn new(frames: u64, reserved: u64) -> FakeMemory {
        FakeMemory {
            bytes: RefCell::new(vec![0; frames as usize * PAGE_SIZE]),
            frames,
            free: RefCell::new((reserved..frames).rev().map(Mfn).collect()),
            owners: RefCell::new(BTreeMap::new()),
        }
    }

    fn range(&self, ma: u64, len: usize) -> std::ops::Range<usize> {
        let start = ma as usize;
        assert!(
            start / PAGE_SIZE == (start + len.max(1) - 1) / PAGE_SIZE,
            "access crosses a frame: {ma:#x}+{len}"
        );
        assert!(ma / (PAGE_SIZE as u64) < self.frames, "access beyond RAM: {ma:#x}");
        start..start + len
    }

    /// The bytes of one frame (for assertions).
    pub fn frame(&self, mfn: Mfn) -> Vec<u8> {
        let r = self.range(mfn.addr(), PAGE_SIZE);
        self.bytes.borrow()[r].to_vec()
    }
}

impl MachineMemory for FakeMemory {
    fn max_mfn(&self) -> Mfn {
        Mfn(self.frames)
    }
    fn read(&self, ma: u64, buf: &mut [u8]) {
        let r = self.range(ma, buf.len());
        buf.copy_from_slice(&self.bytes.borrow()[r]);
    }
    fn write(&self, ma: u64, data: &[u8]) {
        let r = self.range(ma, data.len());
        self.bytes.borrow_mut()[r].copy_from_slice(data);
    }
    fn read_u64(&self, ma: u64) -> u64 {
        assert_eq!(ma % 8, 0, "unaligned u64 read");
        let mut b = [0; 8];
        self.read(ma, &mut b);
        u64::from_le_bytes(b)
    }
    fn write_u64(&self, ma: u64, val: u64) {
        assert_eq!(ma % 8, 0, "unaligned u64 write");
        self.write(ma, &val.to_le_bytes());
    }
    fn fetch_or_u64(&self, ma: u64, bits: u64) -> u64 {
        let old = self.read_u64(ma);
        self.write_u64(ma, old | bits);
        old
    }
    fn fetch_and_u64(&self, ma: u64, bits: u64) -> u64 {
        let old = self.read_u64(ma);
        self.write_u64(ma, old & bits);
        old
    }
    fn cmpxchg_u16(&self, ma: u64, old: u16, new: u16) -> u16 {
        assert_eq!(ma % 2, 0, "unaligned u16 cmpxchg");
        let mut b = [0; 2];
        self.read(ma, &mut b);
        let cur = u16::from_le_bytes(b);
        if cur == old {
            self.write(ma, &new.to_le_bytes());
        }
        cur
    }
    fn zero_frame(&self, mfn: Mfn) {
        let r = self.range(mfn.addr(), PAGE_SIZE);
        self.bytes.borrow_mut()[r].fill(0);
    }
    fn copy_frame(&self, dst: Mfn, src: Mfn) {
        let s = self.frame(src);
        self.write(dst.addr(), &s);
    }
}

impl FrameAllocator for FakeMemory {
    fn alloc_frame(&mut self, owner: DomId) -> Option<Mfn> {
        let mfn = self.free.borrow_mut().pop()?;
        self.zero_frame(mfn);
        self.owners.borrow_mut().insert(mfn, owner);
        Some(mfn)
    }
    fn free_frames(&self) -> u64 {
        self.free.borrow().len() as u64
    }
}
