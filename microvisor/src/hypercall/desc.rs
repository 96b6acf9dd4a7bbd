//! Guest descriptor tables: `set_gdt`, `MMUEXT_SET_LDT` and `update_descriptor`. GDT and LDT
//! frames take the segment-descriptor page type (so they can be neither written directly nor
//! used as page tables), every descriptor is checked as Xen's `check_descriptor` does for a 64-bit PV
//! guest (DPL raised to 3, no system descriptors but the harmless type 0), and the vCPU keeps a
//! validated copy that the arch layer loads (below the reserved GDT entries, or as the LDT)
//! on vCPU switches.

use crate::hv::Hypervisor;
use crate::mm::frame_table::PageType;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::vcpu::GdtFrames;
use crate::x86::seg::{DPL_SHIFT, PRESENT, S, TYPE_MASK};
use alloc::vec::Vec;
use hypercall_abi::xen::{FIRST_RESERVED_GDT_ENTRY, MAX_GUEST_GDT_FRAMES};
use hypercall_abi::{Errno, Mfn, PAGE_SIZE};

const ENTRIES_PER_FRAME: usize = PAGE_SIZE / 8;

/// Checks (and fixes up) one descriptor; `None` if a 64-bit PV guest may not have it.
pub fn check_descriptor(d: u64) -> Option<u64> {
    if d & PRESENT == 0 {
        // A not-present descriptor always faults when loaded: harmless.
        return Some(d);
    }
    // Guests run in ring 3: raise the DPL to 3 so no descriptor grants more.
    let d = d | (3 << DPL_SHIFT);
    if d & S != 0 {
        // Code and data segments: no base/limit checks needed in long mode.
        return Some(d);
    }
    // System descriptors: only type 0 (the upper half of a 16-byte descriptor) is harmless;
    // call gates, TSS and LDT descriptors could reach ring 0.
    (d & TYPE_MASK == 0).then_some(d)
}

/// The descriptors of a validated GDT frame.
fn read_frame(mem: &impl MachineMemory, mfn: Mfn, out: &mut Vec<u64>, n: usize) {
    for i in 0..n {
        // Within the capacity reserved for every entry: never allocates.
        out.push(check_descriptor(mem.read_u64(mfn.addr() + (i * 8) as u64)).unwrap_or(0));
    }
}

/// Takes a general and a segment-descriptor type reference on `f` for the running domain,
/// validating (and fixing up) every descriptor of the frame when it becomes one, as Xen's
/// `alloc_segdesc_page`.
fn get_seg_desc_frame<P: Platform>(hv: &mut Hypervisor<P>, f: Mfn) -> Result<(), Errno> {
    let me = hv.current().domid;
    let mem = hv.plat.mem();
    let mut check = |m: Mfn| {
        (0..ENTRIES_PER_FRAME as u64).all(|e| {
            let ma = m.addr() + e * 8;
            check_descriptor(mem.read_u64(ma)).map(|d| mem.write_u64(ma, d)).is_some()
        })
    };
    hv.frames.get_page(f, me)?;
    hv.frames.get_page_type_with(mem, f, PageType::SegDesc, &mut check).inspect_err(|_| hv.frames.put_page(f))
}

/// Room for a validated copy of `n` descriptors, charged to the running domain's heap quota
/// ([`install`] gives the replaced copy's charge back).
fn reserve_copy<P: Platform>(hv: &mut Hypervisor<P>, n: usize) -> Result<Vec<u64>, Errno> {
    let mut copy = Vec::new();
    copy.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
    hv.cur_dom_mut().hv_mem.charge(copy.capacity() * core::mem::size_of::<u64>())?;
    Ok(copy)
}

/// `MMUEXT_SET_LDT(base, entries)` after Xen's argument checks: the LDT of the running vCPU
/// becomes the `entries` descriptors at guest address `base`. Xen maps LDT pages lazily, on
/// the first fault; here they are taken at once, through the vCPU's current page tables, as
/// segment-descriptor frames (so the guest can change them only with `update_descriptor`).
/// A page that is not mapped, or cannot become a descriptor page, ends the LDT there: its
/// selectors then fault in the guest, where Xen would fault on the lazy mapping. So does a
/// copy the domain's heap quota cannot hold.
pub fn set_ldt<P: Platform>(hv: &mut Hypervisor<P>, base: u64, entries: u32) {
    // An LDT of 8192 entries is 16 frames, as many as a GDT may have.
    const _: () = assert!(8192 / ENTRIES_PER_FRAME <= MAX_GUEST_GDT_FRAMES);
    let nr_frames = (entries as usize).div_ceil(ENTRIES_PER_FRAME);
    let mut frames = GdtFrames::new();
    for i in 0..nr_frames as u64 {
        // An LDT may start in the last page of the address space (Xen checks only the base):
        // it ends where the address space does.
        let Some(va) = base.checked_add(i * PAGE_SIZE as u64) else { break };
        let Ok(ma) = hv.guest().translate(va, crate::guest_mem::Access::Read) else { break };
        let f = Mfn::containing(ma);
        if frames.is_full() || get_seg_desc_frame(hv, f).is_err() {
            break;
        }
        let _ = frames.push(f);
    }
    let n = (entries as usize).min(frames.len() * ENTRIES_PER_FRAME);
    let copy = reserve_copy(hv, n).unwrap_or_else(|_| {
        let mem = hv.plat.mem();
        for f in core::mem::replace(&mut frames, GdtFrames::new()) {
            hv.frames.put_page_and_type(mem, f);
        }
        Vec::new()
    });
    let n = n.min(copy.capacity());
    install(hv, Table::Ldt, frames, copy, n);
}

/// Which of the vCPU's descriptor tables.
#[derive(Clone, Copy)]
enum Table {
    Gdt,
    Ldt,
}

/// Makes `frames` (referenced) and the validated copy of their first `n` descriptors (read
/// into `copy`, reserved and charged for them) the vCPU's `table`, releasing the old frames
/// and the old copy's charge, and has the arch layer reload it.
fn install<P: Platform>(
    hv: &mut Hypervisor<P>,
    table: Table,
    frames: GdtFrames,
    mut copy: Vec<u64>,
    n: usize,
) {
    for (i, &f) in frames.iter().enumerate() {
        read_frame(hv.plat.mem(), f, &mut copy, (n - i * ENTRIES_PER_FRAME).min(ENTRIES_PER_FRAME));
    }
    let v = hv.cur_vcpu_mut();
    let (slot, loaded) = match table {
        Table::Gdt => (&mut v.gdt_frames, &mut v.gdt),
        Table::Ldt => (&mut v.ldt_frames, &mut v.ldt),
    };
    let old = core::mem::replace(slot, frames);
    let old_copy = core::mem::replace(loaded, copy);
    v.gdt_generation = v.gdt_generation.wrapping_add(1);
    hv.cur_dom_mut().hv_mem.uncharge(old_copy.capacity() * core::mem::size_of::<u64>());
    let mem = hv.plat.mem();
    for f in old {
        hv.frames.put_page_and_type(mem, f);
    }
    hv.mark_hw_dirty();
}

/// `set_gdt(frame_list, entries)`.
pub fn set_gdt<P: Platform>(hv: &mut Hypervisor<P>, list: u64, entries: u64) -> Result<i64, Errno> {
    if entries > FIRST_RESERVED_GDT_ENTRY as u64 {
        return Err(Errno::EINVAL);
    }
    let entries = entries as usize;
    let nr_frames = entries.div_ceil(ENTRIES_PER_FRAME);
    debug_assert!(nr_frames <= MAX_GUEST_GDT_FRAMES);
    let mut frames = GdtFrames::new();
    for i in 0..nr_frames as u64 {
        let f = Mfn(hv.guest().read_elem::<u64>(list, i)?);
        frames.push(f).map_err(|_| Errno::EINVAL)?;
    }
    let copy = reserve_copy(hv, entries)?;
    // Take the new frames' references first, so a failure changes nothing.
    for (i, &f) in frames.iter().enumerate() {
        if let Err(e) = get_seg_desc_frame(hv, f) {
            let mem = hv.plat.mem();
            for &g in &frames[..i] {
                hv.frames.put_page_and_type(mem, g);
            }
            hv.cur_dom_mut().hv_mem.uncharge(copy.capacity() * core::mem::size_of::<u64>());
            return Err(e);
        }
    }
    install(hv, Table::Gdt, frames, copy, entries);
    Ok(0)
}

/// `update_descriptor(maddr, desc)`: writes one descriptor in a frame the caller owns.
pub fn update_descriptor<P: Platform>(hv: &mut Hypervisor<P>, maddr: u64, desc: u64) -> Result<i64, Errno> {
    if !maddr.is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    let desc = check_descriptor(desc).ok_or(Errno::EINVAL)?;
    let mfn = Mfn::containing(maddr);
    let me = hv.current().domid;
    let mem = hv.plat.mem();
    hv.frames.get_page(mfn, me)?;
    // A live GDT frame keeps its type; any other frame must be writable-typeable (not a page
    // table, not mapped as one).
    let is_gdt = hv.frames.info(mfn).is_some_and(|i| i.ty == PageType::SegDesc && i.type_count > 0);
    let ty = if is_gdt { PageType::SegDesc } else { PageType::Writable };
    if let Err(e) = hv.frames.get_page_type(mem, mfn, ty) {
        hv.frames.put_page(mfn);
        return Err(e);
    }
    mem.write_u64(maddr, desc);
    hv.frames.put_page_and_type(mem, mfn);
    // Refresh the copies of every vCPU whose GDT or LDT includes this frame.
    let index_in_frame = ((maddr % PAGE_SIZE as u64) / 8) as usize;
    let d = hv.cur_dom_mut();
    let mut any = false;
    for v in d.vcpus.iter_mut() {
        let mut touched = false;
        for (frames, copy) in [(&v.gdt_frames[..], &mut v.gdt), (&v.ldt_frames[..], &mut v.ldt)] {
            if let Some(pos) = frames.iter().position(|&f| f == mfn) {
                let e = pos * ENTRIES_PER_FRAME + index_in_frame;
                if e < copy.len() {
                    copy[e] = desc;
                    touched = true;
                }
            }
        }
        if touched {
            v.gdt_generation = v.gdt_generation.wrapping_add(1);
            any = true;
        }
    }
    if any {
        hv.mark_hw_dirty();
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_rules_follow_xen() {
        let code64_dpl0 = 0x00af_9a00_0000_ffff;
        assert_eq!(check_descriptor(code64_dpl0), Some(code64_dpl0 | (3 << DPL_SHIFT)));
        let data_dpl3 = 0x00cf_f200_0000_ffff;
        assert_eq!(check_descriptor(data_dpl3), Some(data_dpl3));
        assert_eq!(check_descriptor(0), Some(0), "not present");
        let call_gate = 0x0000_ec00_e008_1000; // type 0xc, present
        assert_eq!(check_descriptor(call_gate), None);
        let tss = 0x0000_8900_0000_0067;
        assert_eq!(check_descriptor(tss), None);
        let upper_half = 0x0000_8000_0000_0000; // present, system, type 0
        assert!(check_descriptor(upper_half).is_some());
    }
}
