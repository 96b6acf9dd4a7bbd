//! The page-frame allocator: which of the domain's own pseudo-physical frames are free.
//!
//! Pure bookkeeping (a bitmap over pfns, one bit per page, set = in use). It always hands out
//! the lowest free pfn; [`super`] relies on that to keep the kernel's direct map contiguous
//! (every pfn below the highest one ever handed out has been mapped).

use alloc::vec::Vec;
use hypercall_abi::Pfn;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The pfn is not one of the domain's pages.
    OutOfRange(Pfn),
    /// Freeing a page that is not allocated (a double free).
    NotAllocated(Pfn),
    /// Reserving a page that is already in use.
    InUse(Pfn),
    /// The bitmap itself could not be allocated.
    NoMemory,
}

/// Free/used state of pfns `0..nr_pages`.
pub struct PfnAllocator {
    used: Vec<u64>,
    nr_pages: u64,
    free: u64,
    /// No free pfn lies in a word below this one.
    hint: usize,
}

impl PfnAllocator {
    /// An allocator for `nr_pages` pages of which `0..first_free` are already in use (the
    /// bootstrap region).
    pub fn new(nr_pages: u64, first_free: Pfn) -> Result<PfnAllocator, AllocError> {
        let words = usize::try_from(nr_pages.div_ceil(64)).map_err(|_| AllocError::NoMemory)?;
        let mut used = Vec::new();
        used.try_reserve_exact(words).map_err(|_| AllocError::NoMemory)?;
        used.resize(words, 0);
        // Bits past the last page stay set so they are never handed out.
        if !nr_pages.is_multiple_of(64) {
            if let Some(last) = used.last_mut() {
                *last = !0 << (nr_pages % 64);
            }
        }
        let mut a = PfnAllocator { used, nr_pages, free: nr_pages, hint: 0 };
        for p in 0..first_free.0.min(nr_pages) {
            a.set(p);
        }
        a.free = nr_pages - first_free.0.min(nr_pages);
        Ok(a)
    }

    fn set(&mut self, p: u64) {
        self.used[(p / 64) as usize] |= 1 << (p % 64);
    }

    /// Total pages.
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    /// Pages currently free.
    pub fn free_pages(&self) -> u64 {
        self.free
    }

    /// True if `pfn` is in use (or out of range).
    pub fn is_used(&self, pfn: Pfn) -> bool {
        pfn.0 >= self.nr_pages || self.used[(pfn.0 / 64) as usize] & (1 << (pfn.0 % 64)) != 0
    }

    /// Takes the lowest free pfn.
    pub fn alloc(&mut self) -> Option<Pfn> {
        let (w, word) = self.used.iter().enumerate().skip(self.hint).find(|(_, w)| **w != !0)?;
        let bit = word.trailing_ones() as u64;
        let p = w as u64 * 64 + bit;
        self.hint = w;
        self.set(p);
        self.free -= 1;
        Some(Pfn(p))
    }

    /// Takes the lowest run of `n` free pfns (`n` > 0); its first pfn.
    pub fn alloc_run(&mut self, n: u64) -> Option<Pfn> {
        if n == 0 || n > self.free {
            return None;
        }
        let (mut start, mut len) = (0u64, 0u64);
        for p in 0..self.nr_pages {
            if self.is_used(Pfn(p)) {
                len = 0;
                start = p + 1;
                continue;
            }
            len += 1;
            if len == n {
                for q in start..start + n {
                    self.set(q);
                }
                self.free -= n;
                return Some(Pfn(start));
            }
        }
        None
    }

    /// Returns `pfn` to the free pool.
    pub fn free(&mut self, pfn: Pfn) -> Result<(), AllocError> {
        if pfn.0 >= self.nr_pages {
            return Err(AllocError::OutOfRange(pfn));
        }
        let (w, b) = ((pfn.0 / 64) as usize, 1u64 << (pfn.0 % 64));
        if self.used[w] & b == 0 {
            return Err(AllocError::NotAllocated(pfn));
        }
        self.used[w] &= !b;
        self.free += 1;
        self.hint = self.hint.min(w);
        Ok(())
    }

    /// Extends the allocator to `nr_pages` pages; the new ones are free. Shrinking is refused
    /// (returns false), as is a size whose bitmap cannot be allocated.
    pub fn grow(&mut self, nr_pages: u64) -> bool {
        if nr_pages < self.nr_pages {
            return false;
        }
        let Ok(words) = usize::try_from(nr_pages.div_ceil(64)) else { return false };
        if self.used.try_reserve_exact(words - self.used.len()).is_err() {
            return false;
        }
        // Clear the padding bits of the old last word, then mark the new padding.
        for p in self.nr_pages..(self.used.len() as u64 * 64).min(nr_pages) {
            self.used[(p / 64) as usize] &= !(1 << (p % 64));
        }
        self.used.resize(words, 0);
        if !nr_pages.is_multiple_of(64) {
            if let Some(last) = self.used.last_mut() {
                *last |= !0 << (nr_pages % 64);
            }
        }
        self.free += nr_pages - self.nr_pages;
        self.nr_pages = nr_pages;
        self.hint = 0;
        true
    }

    /// Marks a specific free pfn as in use (e.g. one the kernel took over for another use).
    pub fn reserve(&mut self, pfn: Pfn) -> Result<(), AllocError> {
        if pfn.0 >= self.nr_pages {
            return Err(AllocError::OutOfRange(pfn));
        }
        if self.is_used(pfn) {
            return Err(AllocError::InUse(pfn));
        }
        self.set(pfn.0);
        self.free -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn lowest_first_and_bounds() {
        let mut a = PfnAllocator::new(130, Pfn(100)).unwrap();
        assert_eq!(a.free_pages(), 30);
        assert_eq!(a.alloc(), Some(Pfn(100)));
        assert_eq!(a.alloc(), Some(Pfn(101)));
        a.free(Pfn(100)).unwrap();
        assert_eq!(a.free(Pfn(100)), Err(AllocError::NotAllocated(Pfn(100))));
        assert_eq!(a.free(Pfn(130)), Err(AllocError::OutOfRange(Pfn(130))));
        assert_eq!(a.alloc(), Some(Pfn(100)));
        assert_eq!(a.reserve(Pfn(129)), Ok(()));
        assert_eq!(a.reserve(Pfn(129)), Err(AllocError::InUse(Pfn(129))));
        assert_eq!(a.reserve(Pfn(5)), Err(AllocError::InUse(Pfn(5))));
        let mut got = Vec::new();
        while let Some(p) = a.alloc() {
            got.push(p.0);
        }
        assert_eq!(got, (102..129).collect::<Vec<_>>());
        assert_eq!(a.free_pages(), 0);
        // Frees a bootstrap page: allowed (the kernel may release parts of its region).
        a.free(Pfn(0)).unwrap();
        assert_eq!(a.alloc(), Some(Pfn(0)));
    }

    #[test]
    fn degenerate_sizes() {
        let mut a = PfnAllocator::new(0, Pfn(0)).unwrap();
        assert_eq!(a.alloc(), None);
        let mut a = PfnAllocator::new(64, Pfn(100)).unwrap();
        assert_eq!((a.free_pages(), a.alloc()), (0, None));
        let mut a = PfnAllocator::new(1, Pfn(0)).unwrap();
        assert_eq!((a.alloc(), a.alloc()), (Some(Pfn(0)), None));
    }

    #[test]
    fn grows_in_place() {
        let mut a = PfnAllocator::new(70, Pfn(68)).unwrap();
        assert_eq!((a.alloc(), a.alloc(), a.alloc()), (Some(Pfn(68)), Some(Pfn(69)), None));
        assert!(a.grow(200));
        assert!(!a.grow(100));
        assert_eq!(a.free_pages(), 130);
        let got: Vec<u64> = std::iter::from_fn(|| a.alloc()).map(|p| p.0).collect();
        assert_eq!(got, (70..200).collect::<Vec<_>>());
        assert!(a.is_used(Pfn(199)) && a.is_used(Pfn(200)));
    }

    #[test]
    fn runs_are_the_lowest_that_fit() {
        let mut a = PfnAllocator::new(200, Pfn(10)).unwrap();
        assert_eq!(a.alloc_run(5), Some(Pfn(10)));
        a.reserve(Pfn(20)).unwrap();
        assert_eq!(a.alloc_run(6), Some(Pfn(21)), "15..20 is too short");
        assert_eq!(a.alloc_run(5), Some(Pfn(15)));
        assert_eq!(a.alloc_run(0), None);
        assert_eq!(a.alloc_run(200), None);
        assert_eq!(a.free_pages(), 200 - 10 - 5 - 1 - 6 - 5);
        let rest = a.free_pages();
        assert_eq!(a.alloc_run(rest), Some(Pfn(27)));
        assert_eq!((a.free_pages(), a.alloc()), (0, None));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Free(u64),
        Reserve(u64),
        Grow(u64),
    }

    proptest! {
        /// Against a model: a set of used pfns.
        #[test]
        fn matches_a_set_model(
            nr in 0u64..300,
            first in 0u64..320,
            ops in proptest::collection::vec(prop_oneof![
                Just(Op::Alloc),
                (0u64..320).prop_map(Op::Free),
                (0u64..320).prop_map(Op::Reserve),
                (0u64..400).prop_map(Op::Grow),
            ], 0..400),
        ) {
            let mut a = PfnAllocator::new(nr, Pfn(first)).unwrap();
            let mut nr = nr;
            let mut used: BTreeSet<u64> = (0..first.min(nr)).collect();
            for op in ops {
                match op {
                    Op::Alloc => {
                        let want = (0..nr).find(|p| !used.contains(p));
                        prop_assert_eq!(a.alloc().map(|p| p.0), want);
                        if let Some(p) = want { used.insert(p); }
                    }
                    Op::Free(p) => {
                        let r = a.free(Pfn(p));
                        if p >= nr { prop_assert_eq!(r, Err(AllocError::OutOfRange(Pfn(p)))); }
                        else if used.remove(&p) { prop_assert_eq!(r, Ok(())); }
                        else { prop_assert_eq!(r, Err(AllocError::NotAllocated(Pfn(p)))); }
                    }
                    Op::Reserve(p) => {
                        let r = a.reserve(Pfn(p));
                        if p >= nr { prop_assert_eq!(r, Err(AllocError::OutOfRange(Pfn(p)))); }
                        else if used.insert(p) { prop_assert_eq!(r, Ok(())); }
                        else { prop_assert_eq!(r, Err(AllocError::InUse(Pfn(p)))); }
                    }
                    Op::Grow(n) => {
                        prop_assert_eq!(a.grow(n), n >= nr);
                        nr = nr.max(n);
                    }
                }
                prop_assert_eq!(a.nr_pages(), nr);
                prop_assert_eq!(a.free_pages(), nr - used.len() as u64);
            }
        }
    }
}
