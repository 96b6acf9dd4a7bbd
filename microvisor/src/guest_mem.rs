//! Copying to and from guest virtual memory.
//!
//! The hypervisor never trusts a guest pointer. A copy first checks the range the guest
//! named ([`check_range`]): it must lie wholly in the guest's part of the address space —
//! canonical, and outside the hypervisor hole (which holds the hypervisor's own mappings and
//! the M2P, readable by guests but never a hypercall buffer). Then one of two copies runs:
//!
//! * **Through the MMU** (Xen's `copy_from_guest`): when the page tables the copy goes through
//!   are the ones loaded on the CPU — as they are during a hypercall from that guest — and no
//!   TLB flush is owed, the platform copies with them ([`Platform::copy_from_guest`]). Ring 0
//!   then checks presence at every level and, with CR0.WP, writability at every level for a
//!   write; a fault is caught by the arch layer's fixup table and becomes `-EFAULT`. Every
//!   present guest entry carries `_PAGE_USER` (the validator forces it, as Xen does for 64-bit
//!   PV) and guests cannot create superpages, so these are exactly the checks of the walk
//!   below. The one difference: frames beyond RAM (device memory dom0 maps) are copied like
//!   any other mapped page, as on Xen, where the walk refuses them.
//! * **In software** otherwise (another address space, a flush owed, host tests): the guest's
//!   page tables are walked through [`MachineMemory`], requiring every level to be present and
//!   user-accessible (and writable for writes), and bytes are copied between machine frames and
//!   the hypervisor's memory.
//!
//! Either way a bad pointer — null, non-canonical, into the hole, unmapped, read-only for a
//! write (the guest's own page tables, a read-only grant), straddling into an unmapped page —
//! is a clean `-EFAULT`, and a guest can never make the hypervisor read or write memory it
//! could not itself access. Arguments are copied in once and validated on the copy (no double
//! fetch).

use crate::mm::{pte, MachineMemory};
use crate::platform::Platform;
use hypercall_abi::xen::{in_hypervisor_hole, is_canonical, HYPERVISOR_VIRT_END};
use hypercall_abi::{Errno, Mfn, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Kind of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One past the last canonical address of the lower half (48-bit virtual addresses).
const LOWER_HALF_END: u64 = 1 << 47;

/// A range of guest virtual addresses that passed [`check_range`], the only way to make one:
/// so the platform's copy can rely on it without checking again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    va: u64,
    len: usize,
}

impl GuestRange {
    /// First address.
    pub fn va(&self) -> u64 {
        self.va
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Checks that the `len` bytes at `va` all lie in the guest's part of the address space:
/// canonical, not wrapping, and outside the hypervisor hole. The upper half's guest part
/// starts at the hole's end, so a range is either wholly below the non-canonical gap or
/// wholly above the hole.
#[inline(always)]
pub fn check_range(va: u64, len: usize) -> Result<GuestRange, Errno> {
    if len == 0 {
        return Ok(GuestRange { va, len });
    }
    let last = va.checked_add(len as u64 - 1).ok_or(Errno::EFAULT)?;
    if last < LOWER_HALF_END || va >= HYPERVISOR_VIRT_END {
        Ok(GuestRange { va, len })
    } else {
        Err(Errno::EFAULT)
    }
}

/// A guest address space: the L4 a vCPU runs on.
pub struct GuestSpace<'p, P: Platform> {
    plat: &'p P,
    pub l4: Mfn,
    /// The platform may copy through the MMU (no TLB flush is owed, so every translation the
    /// CPU holds for these page tables is one the guest itself may still use).
    mmu: bool,
}

impl<'p, P: Platform> GuestSpace<'p, P> {
    /// The address space at `l4`, copied through by the software walk only.
    pub fn new(plat: &'p P, l4: Mfn) -> Self {
        GuestSpace { plat, l4, mmu: false }
    }

    /// The address space at `l4`, copied through the MMU when it is loaded and `mmu` holds
    /// (see [`crate::hv::Hypervisor::guest_space`]).
    pub(crate) fn with_mmu(plat: &'p P, l4: Mfn, mmu: bool) -> Self {
        GuestSpace { plat, l4, mmu }
    }

    /// Machine address of guest virtual address `va`, if the guest itself could access it
    /// (the software walk).
    pub fn translate(&self, va: u64, access: Access) -> Result<u64, Errno> {
        translate(self.plat.mem(), self.l4, va, access)
    }

    /// Copies `buf.len()` bytes from guest address `va`.
    #[inline(always)]
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let range = check_range(va, buf.len())?;
        if self.mmu {
            if let Some(r) = self.plat.copy_from_guest(self.l4, range, buf) {
                return r;
            }
        }
        soft_read(self.plat.mem(), self.l4, va, buf)
    }

    /// Copies `data` to guest address `va`.
    #[inline(always)]
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), Errno> {
        let range = check_range(va, data.len())?;
        if self.mmu {
            if let Some(r) = self.plat.copy_to_guest(self.l4, range, data) {
                return r;
            }
        }
        soft_write(self.plat.mem(), self.l4, va, data)
    }

    /// Copies a plain-old-data value in from guest address `va`.
    #[inline(always)]
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, va: u64) -> Result<T, Errno> {
        let mut v = T::new_zeroed();
        self.read(va, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Copies a plain-old-data value out to guest address `va`.
    #[inline(always)]
    pub fn write_obj<T: IntoBytes + Immutable>(&self, va: u64, v: &T) -> Result<(), Errno> {
        self.write(va, v.as_bytes())
    }

    /// Element `i` of an array of `T` at `base`, with overflow-checked addressing.
    #[inline(always)]
    pub fn read_elem<T: FromBytes + IntoBytes>(&self, base: u64, i: u64) -> Result<T, Errno> {
        self.read_obj(elem_addr::<T>(base, i)?)
    }

    /// Writes element `i` of an array of `T` at `base`.
    #[inline(always)]
    pub fn write_elem<T: IntoBytes + Immutable>(&self, base: u64, i: u64, v: &T) -> Result<(), Errno> {
        self.write_obj(elem_addr::<T>(base, i)?, v)
    }
}

/// Machine address of guest virtual address `va` under the page tables at `l4`, if the guest
/// itself could access it.
pub fn translate<M: MachineMemory>(mem: &M, l4: Mfn, va: u64, access: Access) -> Result<u64, Errno> {
    if !is_canonical(va) || in_hypervisor_hole(va) {
        return Err(Errno::EFAULT);
    }
    let max = mem.max_mfn();
    let mut table = l4;
    for level in (1..=4).rev() {
        if table >= max {
            return Err(Errno::EFAULT);
        }
        let e = mem.read_pte(table, pte::table_index(va, level));
        let need = pte::PRESENT | pte::USER | if access == Access::Write { pte::RW } else { 0 };
        if e & need != need {
            return Err(Errno::EFAULT);
        }
        // Guests cannot create superpages (the validator refuses PSE at L2/L3).
        if level > 1 && e & pte::PSE != 0 {
            return Err(Errno::EFAULT);
        }
        table = pte::mfn(e);
    }
    if table >= max {
        return Err(Errno::EFAULT);
    }
    Ok(table.addr() | (va & (PAGE_SIZE as u64 - 1)))
}

/// The software walk's copy in: `buf.len()` bytes from `va` under the page tables at `l4`.
pub fn soft_read<M: MachineMemory>(mem: &M, l4: Mfn, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
    for_each_chunk(mem, l4, va, buf.len(), Access::Read, |ma, off, len| {
        mem.read(ma, &mut buf[off..off + len]);
    })
}

/// The software walk's copy out: `data` to `va` under the page tables at `l4`.
pub fn soft_write<M: MachineMemory>(mem: &M, l4: Mfn, va: u64, data: &[u8]) -> Result<(), Errno> {
    for_each_chunk(mem, l4, va, data.len(), Access::Write, |ma, off, len| {
        mem.write(ma, &data[off..off + len]);
    })
}

/// Splits `[va, va+len)` at page boundaries and hands each piece's machine address to `f`. As
/// with Xen's `copy_to_guest`, a fault in a later page leaves the earlier pages copied;
/// callers discard partial reads and report `-EFAULT`.
fn for_each_chunk<M: MachineMemory>(
    mem: &M,
    l4: Mfn,
    va: u64,
    len: usize,
    access: Access,
    mut f: impl FnMut(u64, usize, usize),
) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    va.checked_add(len as u64 - 1).ok_or(Errno::EFAULT)?;
    let mut off = 0usize;
    while off < len {
        let cur = va + off as u64;
        let n = (PAGE_SIZE - (cur as usize & (PAGE_SIZE - 1))).min(len - off);
        f(translate(mem, l4, cur, access)?, off, n);
        off += n;
    }
    Ok(())
}

/// Address of element `i` of an array of `T` at `base`, or `-EFAULT` on overflow.
pub fn elem_addr<T>(base: u64, i: u64) -> Result<u64, Errno> {
    i.checked_mul(core::mem::size_of::<T>() as u64).and_then(|o| base.checked_add(o)).ok_or(Errno::EFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::xen::HYPERVISOR_VIRT_START;
    use proptest::prelude::*;

    /// What `check_range` must mean, from the ABI's own predicates: no wrap, and every byte's
    /// address canonical and outside the hole. The refused addresses form one interval (the
    /// non-canonical gap, then the hole) starting at `LOWER_HALF_END`, so a range with both
    /// ends allowed holds a refused byte exactly when it holds that one.
    fn every_byte_ok(va: u64, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        let Some(last) = va.checked_add(len as u64 - 1) else { return false };
        let ok = |a: u64| is_canonical(a) && !in_hypervisor_hole(a);
        ok(va) && ok(last) && !(va..=last).contains(&LOWER_HALF_END)
    }

    #[test]
    fn refused_addresses_are_one_interval() {
        assert!(is_canonical(LOWER_HALF_END - 1) && !is_canonical(LOWER_HALF_END));
        assert!(!is_canonical(HYPERVISOR_VIRT_START - 1) && in_hypervisor_hole(HYPERVISOR_VIRT_START));
        assert!(in_hypervisor_hole(HYPERVISOR_VIRT_END - 1) && !in_hypervisor_hole(HYPERVISOR_VIRT_END));
        assert!(is_canonical(HYPERVISOR_VIRT_END));
    }

    #[test]
    fn ranges_a_guest_may_name() {
        let page = PAGE_SIZE;
        assert!(check_range(0x1000, 8).is_ok());
        assert!(check_range(0, 0).is_ok());
        assert!(check_range(u64::MAX, 0).is_ok());
        // The last bytes of the lower half, and one byte over.
        assert!(check_range(LOWER_HALF_END - 8, 8).is_ok());
        assert_eq!(check_range(LOWER_HALF_END - 8, 9), Err(Errno::EFAULT));
        // Non-canonical.
        assert_eq!(check_range(0x8000_0000_0000_0000, 1), Err(Errno::EFAULT));
        assert_eq!(check_range(LOWER_HALF_END, 1), Err(Errno::EFAULT));
        // The hole: its first and last byte, the M2P at its start, and straddling its end.
        assert_eq!(check_range(HYPERVISOR_VIRT_START, 8), Err(Errno::EFAULT));
        assert_eq!(check_range(HYPERVISOR_VIRT_END - 1, 1), Err(Errno::EFAULT));
        assert_eq!(check_range(HYPERVISOR_VIRT_END - 4, 8), Err(Errno::EFAULT));
        assert!(check_range(HYPERVISOR_VIRT_END, page).is_ok());
        // The top of the upper half, and wrapping past it.
        assert!(check_range(u64::MAX - 7, 8).is_ok());
        assert_eq!(check_range(u64::MAX - 7, 9), Err(Errno::EFAULT));
        // From the lower half across the gap and the hole into the guest's upper half.
        assert_eq!(check_range(0x1000, (HYPERVISOR_VIRT_END) as usize), Err(Errno::EFAULT));
    }

    proptest! {
        #[test]
        fn check_range_is_every_byte_allowed(
            va in prop_oneof![
                any::<u64>(),
                (0u64..0x1_0000).prop_map(|d| LOWER_HALF_END.wrapping_sub(d)),
                (0u64..0x1_0000).prop_map(|d| HYPERVISOR_VIRT_START.wrapping_sub(d)),
                (0u64..0x1_0000).prop_map(|d| HYPERVISOR_VIRT_END.wrapping_sub(d)),
                (0u64..0x1_0000).prop_map(|d| u64::MAX - d),
            ],
            len in prop_oneof![0usize..0x2_0000, any::<usize>()],
        ) {
            prop_assert_eq!(check_range(va, len).is_ok(), every_byte_ok(va, len));
            if let Ok(r) = check_range(va, len) {
                prop_assert_eq!((r.va(), r.len()), (va, len));
            }
        }
    }

    #[test]
    fn copies_use_the_mmu_only_within_the_guest_part_and_with_no_flush_owed() {
        use crate::mm::tlb::Flush;
        use crate::testkit::{two_domains, SCRATCH_VA};
        let mut hv = two_domains();
        let mmu_copies = |hv: &crate::testkit::TestHv| hv.platform().mmu_copies.get();
        assert_eq!(hv.guest().write_obj(SCRATCH_VA, &0x1234u64), Ok(()));
        let n = mmu_copies(&hv);
        assert!(n > 0, "a hypercall-time copy goes through the platform");
        assert_eq!(hv.guest().read_obj::<u64>(SCRATCH_VA), Ok(0x1234));
        assert_eq!(mmu_copies(&hv), n + 1);
        // Refused ranges never reach the MMU: the hole (the M2P is guest-readable there), the
        // non-canonical gap, a range wrapping past the top.
        for (va, len) in
            [(HYPERVISOR_VIRT_START, 8), (LOWER_HALF_END, 8), (LOWER_HALF_END - 4, 8), (u64::MAX - 3, 8)]
        {
            let mut buf = [0u8; 8];
            assert_eq!(hv.guest().read(va, &mut buf[..len]), Err(Errno::EFAULT), "{va:#x}");
            assert_eq!(hv.guest().write(va, &buf[..len]), Err(Errno::EFAULT), "{va:#x}");
        }
        assert_eq!(mmu_copies(&hv), n + 1);
        // With a flush owed the CPU may hold translations the guest gave up: the walk copies.
        hv.request_flush(Flush::Page(SCRATCH_VA));
        assert_eq!(hv.guest().read_obj::<u64>(SCRATCH_VA), Ok(0x1234));
        assert_eq!(mmu_copies(&hv), n + 1);
        // A space built for the walk never uses the MMU.
        let l4 = hv.cur_vcpu().current_l4();
        assert_eq!(GuestSpace::new(hv.platform(), l4).read_obj::<u64>(SCRATCH_VA), Ok(0x1234));
        assert_eq!(mmu_copies(&hv), n + 1);
    }
}
