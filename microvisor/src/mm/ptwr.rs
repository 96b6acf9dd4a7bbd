//! Writable page tables (Xen's `ptwr`, `VMASST_TYPE_writable_pagetables`), the memory half:
//! a PV kernel writes an entry of one of its own L1 tables with an ordinary store through a
//! read-only mapping; the write faults, the trap path decodes the instruction (`mov`, `xchg`,
//! `cmpxchg`, `or`/`and` ...) into the store it would make, and hands it here. The new entry is
//! validated exactly as `mmu_update` would validate it, applied with one atomic store, and the
//! old entry's references are dropped; anything else is the guest's page fault.
//!
//! Linux's ELF note says `!writable_page_tables`: it requires the feature.

use super::frame_table::{FrameTable, Owner, PageType};
use super::pagetable::{self, EntryRef, L1Owners};
use super::{pte, MachineMemory};
use hypercall_abi::{DomId, Errno, Mfn, PAGE_SIZE};

pub use crate::x86::pfec;

/// Where a faulting write lands: the L1 table being written and the byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtwrTarget {
    pub l1: Mfn,
    pub offset: usize,
}

/// Xen's `ptwr_do_page_fault` test: a #PF at `va` with `error_code`, taken by `d`'s kernel
/// running on the page tables `l4`, is a write to a read-only mapping of one of `d`'s live L1
/// tables (present, write, not reserved-bit, not a fetch). `None`: an ordinary fault, for
/// the guest.
pub fn target<M: MachineMemory>(
    ft: &FrameTable,
    mem: &M,
    d: DomId,
    l4: Mfn,
    va: u64,
    error_code: u64,
) -> Option<PtwrTarget> {
    use pfec::*;
    if error_code & (PRESENT | WRITE | RSVD | INSN_FETCH) != PRESENT | WRITE {
        return None;
    }
    let mut table = l4;
    for level in (1..=4).rev() {
        if table >= ft.max_mfn() {
            return None;
        }
        let e = mem.read_pte(table, pte::table_index(va, level));
        if !pte::is_present(e) || (level > 1 && e & pte::PSE != 0) {
            return None;
        }
        if level == 1 && e & pte::RW != 0 {
            return None;
        }
        table = pte::mfn(e);
    }
    let live_l1 = ft.is_live_type(table, PageType::L1) && ft.owner(table) == Some(Owner::Domain(d));
    live_l1.then_some(PtwrTarget { l1: table, offset: (va % PAGE_SIZE as u64) as usize })
}

/// What an emulated store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtwrOutcome {
    /// The entry was validated and written.
    Written,
    /// A `cmpxchg` found this value instead of the expected one and wrote nothing (the
    /// emulator loads it into the accumulator and clears ZF).
    CmpxchgFailed(u64),
}

/// Xen's `ptwr_emulated_update`: the guest stores the low `bytes` (1, 2, 4 or 8) of `val` at
/// `at` (naturally aligned), or with `expected` compares and exchanges them. A store smaller
/// than an entry is merged with the rest of the current entry. The resulting entry is checked
/// as `mmu_update` checks it (`Err`: reflect the page fault to the guest); an L1TF-unsafe
/// non-present entry is reported on the frame table as `mmu_update` reports it.
pub fn emulated_update<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    d: DomId,
    at: PtwrTarget,
    val: u64,
    bytes: usize,
    expected: Option<u64>,
) -> Result<PtwrOutcome, Errno> {
    if !matches!(bytes, 1 | 2 | 4 | 8) || !at.offset.is_multiple_of(bytes) || at.offset >= PAGE_SIZE {
        return Err(Errno::EINVAL);
    }
    if !ft.is_live_type(at.l1, PageType::L1) || ft.owner(at.l1) != Some(Owner::Domain(d)) {
        return Err(Errno::EINVAL);
    }
    let idx = at.offset / 8;
    let cur = mem.read_pte(at.l1, idx);
    let (new, old) = if bytes == 8 {
        (val, expected)
    } else {
        let shift = (at.offset % 8) * 8;
        let mask = ((1u64 << (bytes * 8)) - 1) << shift;
        let merge = |v: u64| (cur & !mask) | ((v << shift) & mask);
        (merge(val), expected.map(merge))
    };
    if let Some(old) = old {
        if old != cur {
            return Ok(PtwrOutcome::CmpxchgFailed(if bytes == 8 {
                cur
            } else {
                (cur >> ((at.offset % 8) * 8)) & ((1u64 << (bytes * 8)) - 1)
            }));
        }
    }
    ft.get_page(at.l1, d)?;
    let r = pagetable::mod_entry(
        ft,
        mem,
        EntryRef { table: at.l1, level: 1, idx },
        new,
        false,
        L1Owners::local(d),
    );
    ft.put_page(at.l1);
    r.map(|()| PtwrOutcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mmu::testkit::*;
    use crate::mm::pte::{make, PRESENT, RW};

    const WRITE_FAULT: u64 = pfec::PRESENT | pfec::WRITE | pfec::USER;

    /// The VA at which `one_guest`'s space maps its L1 read-only (`l1[7]`).
    const L1_VA: u64 = 7 << 12;

    #[test]
    fn a_write_fault_on_a_read_only_mapping_of_an_own_l1_is_a_ptwr_target() {
        let (m, g, s) = one_guest();
        let l4 = g.kernel_l4.unwrap();
        let t = target(&m.ft, &m.mem, g.domid, l4, L1_VA + 0x18, WRITE_FAULT);
        assert_eq!(t, Some(PtwrTarget { l1: s.l1, offset: 0x18 }));
        // Not for reads, fetches, reserved-bit faults, not-present pages, data pages, or
        // another domain.
        for ec in [pfec::PRESENT, WRITE_FAULT | pfec::INSN_FETCH, WRITE_FAULT | pfec::RSVD, pfec::WRITE] {
            assert_eq!(target(&m.ft, &m.mem, g.domid, l4, L1_VA, ec), None, "{ec:#x}");
        }
        assert_eq!(target(&m.ft, &m.mem, g.domid, l4, 0x0000, WRITE_FAULT), None, "data page (RW)");
        assert_eq!(target(&m.ft, &m.mem, g.domid, l4, 0x40_0000, WRITE_FAULT), None, "unmapped");
        assert_eq!(target(&m.ft, &m.mem, DomId(7), l4, L1_VA, WRITE_FAULT), None);
    }

    #[test]
    fn stores_are_validated_like_mmu_update() {
        let (mut m, g, s) = one_guest();
        let at = |slot: usize| PtwrTarget { l1: s.l1, offset: slot * 8 };
        let before = m.info(s.data[1]).count;
        // A full-entry mov mapping a data page read-only, then writable.
        let e = make(s.data[1], PRESENT | crate::mm::pte::USER);
        assert_eq!(emulated_update(&mut m.ft, &m.mem, g.domid, at(20), e, 8, None), Ok(PtwrOutcome::Written));
        assert_eq!(m.info(s.data[1]).count, before + 1);
        assert_eq!(m.mem.read_pte(s.l1, 20) & !(pagetable::GUEST_KERNEL | crate::mm::pte::GLOBAL), e);
        // Writable mapping of a page table: refused (the guest gets its #PF).
        let bad = make(s.l2, PRESENT | RW);
        assert_eq!(emulated_update(&mut m.ft, &m.mem, g.domid, at(21), bad, 8, None), Err(Errno::EBUSY));
        assert_eq!(m.mem.read_pte(s.l1, 21), 0);
        // A 4-byte store of the low half (Linux's set_pte on 32-bit halves, `or`/`and` forms):
        // merged with the high half.
        let cur = m.mem.read_pte(s.l1, 20);
        let lo = (cur as u32 | RW as u32) as u64;
        assert_eq!(
            emulated_update(&mut m.ft, &m.mem, g.domid, at(20), lo, 4, None),
            Ok(PtwrOutcome::Written)
        );
        assert_ne!(m.mem.read_pte(s.l1, 20) & RW, 0);
        assert_eq!(m.info(s.data[1]).ty, PageType::Writable);
        // cmpxchg: a stale expected value writes nothing and returns the current entry.
        let cur = m.mem.read_pte(s.l1, 20);
        assert_eq!(
            emulated_update(&mut m.ft, &m.mem, g.domid, at(20), 0, 8, Some(cur ^ 1)),
            Ok(PtwrOutcome::CmpxchgFailed(cur))
        );
        assert_eq!(m.mem.read_pte(s.l1, 20), cur);
        // The right one clears it and drops the references (Linux's ptep_get_and_clear).
        assert_eq!(
            emulated_update(&mut m.ft, &m.mem, g.domid, at(20), 0, 8, Some(cur)),
            Ok(PtwrOutcome::Written)
        );
        assert_eq!((m.mem.read_pte(s.l1, 20), m.info(s.data[1]).count), (0, before));
        // Misaligned or odd-sized stores, and hypervisor-unsafe non-present entries.
        assert_eq!(
            emulated_update(&mut m.ft, &m.mem, g.domid, PtwrTarget { l1: s.l1, offset: 3 }, 0, 4, None),
            Err(Errno::EINVAL)
        );
        assert_eq!(emulated_update(&mut m.ft, &m.mem, g.domid, at(22), 0, 3, None), Err(Errno::EINVAL));
        assert_eq!(emulated_update(&mut m.ft, &m.mem, g.domid, at(22), 0x5000, 8, None), Err(Errno::EINVAL));
        assert!(m.ft.take_l1tf_violation().is_some());
        // Not an L1 of the caller.
        let l2 = PtwrTarget { l1: s.l2, offset: 0 };
        assert_eq!(emulated_update(&mut m.ft, &m.mem, g.domid, l2, 0, 8, None), Err(Errno::EINVAL));
        m.audit(&[&g]);
    }
}
