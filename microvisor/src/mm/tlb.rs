//! TLB flushes: the one type in which hypercalls ask for a flush and the arch layer carries it
//! out, and the rule for combining a pending flush with a page-table switch.
//!
//! The rule exists because PV guests' user mappings — their own and application grant
//! mappings — carry the global bit (Xen's `adjust_guest_l1e`), and a CR3 load leaves global
//! entries in the TLB. A pending single-page flush therefore survives a CR3 change: dropping
//! it let a grantee keep reaching a granted page after unmapping it in the same multicall as
//! a `MMUEXT_NEW_BASEPTR` (issue 9, finding 6).

/// A TLB flush owed before the guest runs again. The hypervisor runs guests on one CPU, so a
/// flush "on every CPU the domain used" and "on this CPU" are the same operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flush {
    #[default]
    None,
    /// `invlpg` of one guest address (it removes the page's global entry too).
    Page(u64),
    /// The whole TLB, global entries and paging-structure caches included.
    All,
}

impl Flush {
    /// The smallest flush that does both.
    pub fn merge(self, other: Flush) -> Flush {
        match (self, other) {
            (Flush::None, x) | (x, Flush::None) => x,
            (Flush::Page(a), Flush::Page(b)) if a == b => Flush::Page(a),
            _ => Flush::All,
        }
    }
}

/// The TLB operations of the CPU (the arch layer implements them; host tests model them).
pub trait TlbOps {
    /// Loads CR3: drops every non-global translation, keeps global ones.
    fn load_cr3(&mut self, cr3: u64);
    /// Drops the translations of the page holding `va`, global or not.
    fn invlpg(&mut self, va: u64);
    /// Drops every translation, global ones included.
    fn flush_all(&mut self);
}

/// Switches to `new_cr3` (if the page tables changed) and carries out `pending`. Returns true
/// when every TLB entry was dropped (the frame table's TLB epoch may then advance).
pub fn switch_and_flush(tlb: &mut impl TlbOps, new_cr3: Option<u64>, pending: Flush) -> bool {
    if let Some(cr3) = new_cr3 {
        tlb.load_cr3(cr3);
    }
    match pending {
        Flush::None => false,
        // Not covered by the CR3 load: the page's entry may be global.
        Flush::Page(va) => {
            tlb.invlpg(va);
            false
        }
        Flush::All => {
            tlb.flush_all();
            true
        }
    }
}

#[cfg(test)]
pub(crate) mod model {
    //! A model of a TLB with global entries, for the host tests.
    use super::TlbOps;
    use std::collections::BTreeMap;

    /// Cached translations: page address -> global.
    #[derive(Default, Debug)]
    pub struct ModelTlb {
        pub entries: BTreeMap<u64, bool>,
        pub cr3: u64,
    }

    impl ModelTlb {
        pub fn cache(&mut self, va: u64, global: bool) {
            self.entries.insert(va & !0xfff, global);
        }
        pub fn reaches(&self, va: u64) -> bool {
            self.entries.contains_key(&(va & !0xfff))
        }
    }

    impl TlbOps for ModelTlb {
        fn load_cr3(&mut self, cr3: u64) {
            self.cr3 = cr3;
            self.entries.retain(|_, g| *g);
        }
        fn invlpg(&mut self, va: u64) {
            self.entries.remove(&(va & !0xfff));
        }
        fn flush_all(&mut self) {
            self.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::ModelTlb;
    use super::*;

    #[test]
    fn flushes_merge_to_the_smallest_cover() {
        assert_eq!(Flush::None.merge(Flush::Page(0x1000)), Flush::Page(0x1000));
        assert_eq!(Flush::Page(0x1000).merge(Flush::Page(0x1000)), Flush::Page(0x1000));
        assert_eq!(Flush::Page(0x1000).merge(Flush::Page(0x2000)), Flush::All);
        assert_eq!(Flush::All.merge(Flush::None), Flush::All);
        assert_eq!(Flush::Page(0x1000).merge(Flush::All), Flush::All);
    }

    #[test]
    fn a_page_flush_survives_a_cr3_switch() {
        let mut tlb = ModelTlb::default();
        tlb.cache(0x7000_1000, true);
        tlb.cache(0x7000_2000, false);
        tlb.cache(0x7000_3000, true);
        assert!(!switch_and_flush(&mut tlb, Some(0x5000), Flush::Page(0x7000_1234)));
        assert!(!tlb.reaches(0x7000_1000), "the global entry of the flushed page is gone");
        assert!(!tlb.reaches(0x7000_2000), "the CR3 load dropped non-global entries");
        assert!(tlb.reaches(0x7000_3000), "other global entries stay");
        assert!(switch_and_flush(&mut tlb, None, Flush::All));
        assert!(tlb.entries.is_empty());
    }
}
