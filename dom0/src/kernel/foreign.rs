//! Mapping other domains' ring pages (their xenstore and console rings) into a window of
//! dom0's address space, the two ways Xen's xenstored and xenconsoled do it:
//!
//! * through the grant the domain builder reserved for dom0 (`GNTTAB_RESERVED_XENSTORE`,
//!   `GNTTAB_RESERVED_CONSOLE`): `GNTTABOP_map_grant_ref` at a VA of the window;
//! * failing that, by foreign mapping, as with privcmd: `mmu_update` with `foreigndom` = the
//!   frame's owner and an L1 entry naming the frame (dom0 is privileged; the hypervisor
//!   checks the owner really owns it).
//!
//! Either way the hypervisor holds a reference to the frame while the mapping exists, so a
//! mapping must be removed before the domain is destroyed (or its frames stay allocated).

use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::grant_table::{gntmap, GnttabMapGrantRef, GnttabUnmapGrantRef};
use hypercall_abi::xen::{mmu, MmuUpdate};
use hypercall_abi::{DomId, Errno, GrantRef, Mfn};
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::xenbus::ring::MappedPage;
use spin::Mutex;

/// Start of the window (its own slot in the registry of windows).
pub const FOREIGN_WINDOW: u64 = pv_guest_kernel::va::FOREIGN_RINGS;
/// Pages in the window: two rings per domain.
pub const SLOTS: usize = 128;

static USED: Mutex<[bool; SLOTS]> = Mutex::new([false; SLOTS]);
/// Try the reserved grant first (cleared by dom0's `ringmap=foreign`, to exercise the
/// fallback).
static USE_GRANTS: AtomicBool = AtomicBool::new(true);

/// Whether [`map`] tries the grant before the foreign mapping.
pub fn use_grants(on: bool) {
    USE_GRANTS.store(on, Ordering::SeqCst);
}

/// How a page got mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// A grant mapping, undone with this handle.
    Grant(u32),
    /// A foreign mapping.
    Foreign,
}

/// A frame of another domain mapped read-write in the window.
#[derive(Debug)]
pub struct ForeignPage {
    slot: usize,
    pub how: How,
}

impl ForeignPage {
    /// Where it is mapped.
    pub fn va(&self) -> u64 {
        FOREIGN_WINDOW + self.slot as u64 * 4096
    }

    /// The page, for ring access.
    pub fn page(&self) -> MappedPage {
        // SAFETY: the slot stays mapped to the other domain's frame until `unmap` consumes
        // `self`; the page is only accessed through `MappedPage`'s atomic and volatile
        // accessors and no reference into it is ever made.
        unsafe { MappedPage::new(self.va()) }
    }
}

fn map_grant(va: u64, domid: DomId, gref: GrantRef) -> Result<u32, Errno> {
    let mut op = GnttabMapGrantRef {
        host_addr: va,
        flags: gntmap::HOST_MAP,
        ref_: gref,
        dom: domid,
        status: 0,
        handle: 0,
        dev_bus_addr: 0,
    };
    hypercall::grant_table_op(core::slice::from_mut(&mut op))?;
    if op.status != 0 {
        return Err(Errno::EACCES);
    }
    Ok(op.handle)
}

fn map_foreign(va: u64, domid: DomId, mfn: Mfn) -> Result<(), Errno> {
    let ptr = mm::entry_maddr(va, 1)?;
    let req = MmuUpdate { ptr: ptr | mmu::NORMAL_PT_UPDATE, val: pt::make(mfn, pt::PAGE_KERNEL) };
    let mut done = 0u32;
    hypercall::check(hypercall::mmu_update(core::slice::from_ref(&req), &mut done, domid))?;
    if done != 1 {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// Maps `domid`'s ring: grant `gref` if the domain granted it, else frame `mfn`.
pub fn map(domid: DomId, gref: GrantRef, mfn: Mfn) -> Result<ForeignPage, Errno> {
    let slot = {
        let mut used = USED.lock();
        let i = used.iter().position(|u| !u).ok_or(Errno::ENOSPC)?;
        used[i] = true;
        i
    };
    let va = FOREIGN_WINDOW + slot as u64 * 4096;
    // Both ways need the L1 table for the slot to exist.
    let granted =
        || if USE_GRANTS.load(Ordering::SeqCst) { map_grant(va, domid, gref) } else { Err(Errno::EPERM) };
    let how = mm::entry_maddr(va, 1).and_then(|_| match granted() {
        Ok(handle) => Ok(How::Grant(handle)),
        Err(_) => map_foreign(va, domid, mfn).map(|()| How::Foreign),
    });
    match how {
        Ok(how) => Ok(ForeignPage { slot, how }),
        Err(e) => {
            USED.lock()[slot] = false;
            Err(e)
        }
    }
}

/// Removes the mapping (and the TLB entry) and frees the slot.
pub fn unmap(p: ForeignPage) -> Result<(), Errno> {
    let r = match p.how {
        How::Grant(handle) => {
            let mut op =
                GnttabUnmapGrantRef { host_addr: p.va(), dev_bus_addr: 0, handle, status: 0, _pad: 0 };
            match hypercall::grant_table_op(core::slice::from_mut(&mut op)) {
                Ok(()) if op.status != 0 => Err(Errno::EINVAL),
                r => r,
            }
        }
        How::Foreign => mm::unmap_page(p.va()),
    };
    if r.is_ok() {
        USED.lock()[p.slot] = false;
    }
    r
}
