//! Grant tables, granting side (v1): how this domain lets another map or copy one of its
//! frames — the frontends' half of every split driver.
//!
//! The table lives in hypervisor frames the domain maps itself (`GNTTABOP_setup_table` names
//! them). Granting writes an entry: `domid` and `frame` first, a write barrier, then `flags`
//! (`GTF_permit_access`, plus `GTF_readonly` when the peer must not write). Ending a grant
//! swaps `flags` to 0 with `cmpxchg`, which fails while the hypervisor has `GTF_reading` or
//! `GTF_writing` set — the peer still has the frame mapped, so the frame must not be reused
//! yet and the reference is not freed.
//!
//! Entries 0..8 are reserved (console, xenstore); references are handed out from 8 by a
//! free list ([`RefAllocator`], host-tested).

use alloc::vec::Vec;
use hypercall_abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use hypercall_abi::GrantRef;

/// A free list of grant references in `[GNTTAB_NR_RESERVED_ENTRIES, limit)`.
#[derive(Debug)]
pub struct RefAllocator {
    free: Vec<u32>,
    /// One bit per reference: set while handed out.
    used: Vec<u64>,
    limit: u32,
}

impl RefAllocator {
    /// References for a table of `entries` entries.
    pub fn new(entries: u32) -> RefAllocator {
        let first = GNTTAB_NR_RESERVED_ENTRIES.min(entries);
        RefAllocator {
            // Handed out lowest first.
            free: (first..entries).rev().collect(),
            used: alloc::vec![0; entries.div_ceil(64) as usize],
            limit: entries,
        }
    }

    /// A free reference.
    pub fn alloc(&mut self) -> Option<GrantRef> {
        let r = self.free.pop()?;
        self.used[(r / 64) as usize] |= 1 << (r % 64);
        Some(GrantRef(r))
    }

    /// Returns `r`; false if it was not handed out (a double free, or a reserved entry).
    pub fn free(&mut self, r: GrantRef) -> bool {
        if r.0 >= self.limit || r.0 < GNTTAB_NR_RESERVED_ENTRIES || !self.is_used(r) {
            return false;
        }
        self.used[(r.0 / 64) as usize] &= !(1 << (r.0 % 64));
        self.free.push(r.0);
        true
    }

    /// True if `r` is handed out.
    pub fn is_used(&self, r: GrantRef) -> bool {
        r.0 < self.limit && self.used[(r.0 / 64) as usize] & (1 << (r.0 % 64)) != 0
    }

    /// References still free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(not(test))]
mod kernel {
    use super::RefAllocator;
    use crate::hypercall;
    use crate::mm::{self, pt};
    use core::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};
    use hypercall_abi::grant_table::{gntst, gtf, GnttabSetupTable, GRANT_ENTRIES_PER_FRAME_V1};
    use hypercall_abi::{DomId, Errno, GrantRef, Mfn};
    use spin::Mutex;

    /// Where the table's frames are mapped.
    pub const GNTTAB_VA: u64 = crate::va::GRANT_TABLE;
    /// Frames asked for at set-up (512 entries each).
    pub const DEFAULT_FRAMES: u32 = 4;

    struct Table {
        entries: u32,
        refs: RefAllocator,
    }

    static TABLE: Mutex<Option<Table>> = Mutex::new(None);

    fn entry(r: GrantRef) -> u64 {
        GNTTAB_VA + u64::from(r.0) * 8
    }

    /// `GNTTABOP_setup_table` for our own domain: grows the table to `list.len()` frames and
    /// fills `list` with their machine frames. `Err` holds the hypercall's errno, or `EINVAL`
    /// for a refusal in the op's status (too many frames for the hypervisor's limit).
    pub fn setup_table(list: &mut [u64]) -> Result<(), Errno> {
        let mut st = GnttabSetupTable {
            dom: DomId::SELF,
            nr_frames: u32::try_from(list.len()).map_err(|_| Errno::EINVAL)?,
            frame_list: list.as_mut_ptr() as u64,
            ..Default::default()
        };
        hypercall::grant_table_op(core::slice::from_mut(&mut st))?;
        if st.status == gntst::OKAY {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Sets the table up with `frames` frames (fewer if the hypervisor's limit is lower) and
    /// maps them; idempotent.
    pub fn init(frames: u32) -> Result<u32, Errno> {
        let mut t = TABLE.lock();
        if let Some(t) = t.as_ref() {
            return Ok(t.entries);
        }
        let mut list = [0u64; 32];
        let mut n = frames.clamp(1, list.len() as u32);
        loop {
            match setup_table(&mut list[..n as usize]) {
                Ok(()) => break,
                Err(Errno::EINVAL) if n > 1 => n /= 2,
                Err(Errno::EINVAL) => return Err(Errno::ENOSPC),
                Err(e) => return Err(e),
            }
        }
        for (i, &mfn) in list.iter().take(n as usize).enumerate() {
            mm::map_page(GNTTAB_VA + i as u64 * 4096, Mfn(mfn), pt::PAGE_KERNEL | pt::NX)?;
        }
        let entries = n * GRANT_ENTRIES_PER_FRAME_V1;
        *t = Some(Table { entries, refs: RefAllocator::new(entries) });
        Ok(entries)
    }

    /// Lets `domid` map (or copy) frame `mfn`, read-only if `readonly`.
    pub fn grant_access(domid: DomId, mfn: Mfn, readonly: bool) -> Result<GrantRef, Errno> {
        let frame = u32::try_from(mfn.0).map_err(|_| Errno::EINVAL)?;
        let r = {
            let mut t = TABLE.lock();
            t.as_mut().ok_or(Errno::ENODEV)?.refs.alloc().ok_or(Errno::ENOSPC)?
        };
        let e = entry(r);
        // SAFETY: the entry lies in the mapped table (`r` < entries) and is ours: a free
        // reference has flags 0, so the hypervisor does not touch it until flags are set.
        unsafe {
            (*((e + 2) as *const AtomicU16)).store(domid.0, Ordering::Relaxed);
            (*((e + 4) as *const AtomicU32)).store(frame, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        // SAFETY: as above.
        unsafe { (*(e as *const AtomicU16)).store(flags, Ordering::Release) };
        Ok(r)
    }

    /// Revokes `r` and frees it. `EBUSY` while the peer still has it mapped (the reference
    /// stays allocated; try again later). `EINVAL` for a reference not handed out.
    pub fn end_access(r: GrantRef) -> Result<(), Errno> {
        let mut t = TABLE.lock();
        let t = t.as_mut().ok_or(Errno::ENODEV)?;
        if !t.refs.is_used(r) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: `r` is a handed-out reference inside the mapped table.
        let flags = unsafe { &*(entry(r) as *const AtomicU16) };
        let mut cur = flags.load(Ordering::Acquire);
        loop {
            if cur & (gtf::READING | gtf::WRITING) != 0 {
                return Err(Errno::EBUSY);
            }
            match flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        t.refs.free(r);
        Ok(())
    }

    /// References still free.
    pub fn available() -> usize {
        TABLE.lock().as_ref().map_or(0, |t| t.refs.available())
    }
}

#[cfg(not(test))]
pub use kernel::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hands_out_from_8_and_refuses_double_frees() {
        let mut a = RefAllocator::new(512);
        assert_eq!(a.available(), 504);
        let r = a.alloc().unwrap();
        assert_eq!(r, GrantRef(8));
        assert!(a.is_used(r));
        assert!(a.free(r));
        assert!(!a.free(r), "double free");
        assert!(!a.free(GrantRef(1)), "reserved");
        assert!(!a.free(GrantRef(512)), "out of range");
        let mut small = RefAllocator::new(9);
        assert_eq!(small.alloc(), Some(GrantRef(8)));
        assert_eq!(small.alloc(), None);
    }

    proptest! {
        #[test]
        fn never_hands_out_a_reference_twice(ops in proptest::collection::vec(any::<(bool, u16)>(), 1..300)) {
            let mut a = RefAllocator::new(64);
            let mut out = std::collections::BTreeSet::new();
            for (alloc, pick) in ops {
                if alloc {
                    if let Some(r) = a.alloc() {
                        prop_assert!(r.0 >= 8 && r.0 < 64);
                        prop_assert!(out.insert(r.0));
                    } else {
                        prop_assert_eq!(out.len(), 56);
                    }
                } else {
                    let r = GrantRef(u32::from(pick) % 70);
                    prop_assert_eq!(a.free(r), out.remove(&r.0));
                }
                prop_assert_eq!(a.available() + out.len(), 56);
            }
        }
    }
}
