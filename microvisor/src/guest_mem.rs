//! Copying to and from guest virtual memory.
//!
//! The hypervisor never dereferences a guest pointer. It walks the guest's page tables in
//! software (through [`MachineMemory`]), requiring every level to be present and
//! user-accessible (and writable for writes), then copies bytes between machine frames and
//! its own memory. So a bad pointer — null, non-canonical, into the hypervisor hole, unmapped,
//! read-only for a write, straddling into an unmapped page — is a clean `-EFAULT`, and a
//! guest can never make the hypervisor read or write memory it could not itself access.
//! Arguments are copied in once and validated on the copy (no double fetch).

use crate::mm::{pte, MachineMemory};
use hypercall_abi::xen::{in_hypervisor_hole, is_canonical};
use hypercall_abi::{Errno, Mfn, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Kind of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A guest address space: the L4 a vCPU runs on.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpace<'m, M: MachineMemory> {
    pub mem: &'m M,
    pub l4: Mfn,
}

impl<'m, M: MachineMemory> GuestSpace<'m, M> {
    pub fn new(mem: &'m M, l4: Mfn) -> Self {
        GuestSpace { mem, l4 }
    }

    /// Machine address of guest virtual address `va`, if the guest itself could access it.
    pub fn translate(&self, va: u64, access: Access) -> Result<u64, Errno> {
        if !is_canonical(va) || in_hypervisor_hole(va) {
            return Err(Errno::EFAULT);
        }
        let max = self.mem.max_mfn();
        let mut table = self.l4;
        for level in (1..=4).rev() {
            if table >= max {
                return Err(Errno::EFAULT);
            }
            let e = self.mem.read_pte(table, pte::table_index(va, level));
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

    /// Copies `buf.len()` bytes from guest address `va`.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.for_each_chunk(va, buf.len(), Access::Read, |ma, off, len| {
            self.mem.read(ma, &mut buf[off..off + len]);
        })
    }

    /// Copies `data` to guest address `va`.
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), Errno> {
        self.for_each_chunk(va, data.len(), Access::Write, |ma, off, len| {
            self.mem.write(ma, &data[off..off + len]);
        })
    }

    /// Copies a plain-old-data value in from guest address `va`.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, va: u64) -> Result<T, Errno> {
        let mut v = T::new_zeroed();
        self.read(va, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Copies a plain-old-data value out to guest address `va`.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, va: u64, v: &T) -> Result<(), Errno> {
        self.write(va, v.as_bytes())
    }

    /// Element `i` of an array of `T` at `base`, with overflow-checked addressing.
    pub fn read_elem<T: FromBytes + IntoBytes>(&self, base: u64, i: u64) -> Result<T, Errno> {
        self.read_obj(elem_addr::<T>(base, i)?)
    }

    /// Writes element `i` of an array of `T` at `base`.
    pub fn write_elem<T: IntoBytes + Immutable>(&self, base: u64, i: u64, v: &T) -> Result<(), Errno> {
        self.write_obj(elem_addr::<T>(base, i)?, v)
    }

    /// Splits `[va, va+len)` at page boundaries and hands each piece's machine address to
    /// `f`. As with Xen's `copy_to_guest`, a fault in a later page leaves the earlier pages
    /// copied; callers discard partial reads and report `-EFAULT`.
    fn for_each_chunk(
        &self,
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
            f(self.translate(cur, access)?, off, n);
            off += n;
        }
        Ok(())
    }
}

/// Address of element `i` of an array of `T` at `base`, or `-EFAULT` on overflow.
pub fn elem_addr<T>(base: u64, i: u64) -> Result<u64, Errno> {
    i.checked_mul(core::mem::size_of::<T>() as u64).and_then(|o| base.checked_add(o)).ok_or(Errno::EFAULT)
}
