//! `memory_op`: a domain's reservation (balloon up and down, populate), and the queries PV
//! guests make about memory. Extent lists are copied in a bounded batch at a time; the call
//! continues itself with Xen's encoding (`cmd | start_extent << MEMOP_EXTENT_SHIFT`).

use super::Hc;
use crate::hv::{set_m2p, Hypervisor};
use crate::mm::mmu;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use alloc::vec::Vec;
use hypercall_abi::memory::{
    e820, op, E820Entry, XenMachphysMapping, XenMachphysMfnList, XenMemoryMap, XenMemoryReservation,
};
use hypercall_abi::xen::{
    resolve_domid, ArchSharedInfo, SharedInfo, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
};
use hypercall_abi::{DomId, Errno, PAGE_SIZE};

/// Bits of `cmd` holding the command; the rest is the extent to continue from.
pub const MEMOP_EXTENT_SHIFT: u32 = 6;
const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;
/// Extents handled per call before continuing.
const BATCH: u64 = 512;

pub fn memory_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Hc {
    let start = cmd >> MEMOP_EXTENT_SHIFT;
    let me = hv.current().domid;
    let res: Result<i64, Errno> = match (cmd & MEMOP_CMD_MASK) as u32 {
        c @ (op::INCREASE_RESERVATION | op::DECREASE_RESERVATION | op::POPULATE_PHYSMAP) => {
            return reservation(hv, c, start, arg);
        }
        op::MAXIMUM_RAM_PAGE => Ok(hv.frames.max_mfn().0 as i64),
        op::CURRENT_RESERVATION | op::MAXIMUM_RESERVATION | op::MAXIMUM_GPFN => {
            let target = match hv.guest().read_obj::<DomId>(arg) {
                Ok(d) => resolve_domid(d, me),
                Err(e) => return Hc::Ret(e.to_ret()),
            };
            // As Xen: the domain is looked up first (ESRCH), then the caller's right to it.
            if hv.domains.contains_key(&target) && target != me && !hv.cur_dom().privileged {
                return Hc::Ret(Errno::EPERM.to_ret());
            }
            match (hv.domains.get(&target), (cmd & MEMOP_CMD_MASK) as u32) {
                (None, _) => Err(Errno::ESRCH),
                (Some(_), op::CURRENT_RESERVATION) => Ok(hv.frames.tot_pages(target) as i64),
                (Some(d), op::MAXIMUM_RESERVATION) => Ok(d.max_pages as i64),
                (Some(d), _) => {
                    // Xen's domain_get_maximum_gpfn for PV: the guest's own word for its P2M
                    // size, `shared_info.arch.max_pfn` (PV guests give a count, hence - 1).
                    let at = d.shared_info.addr() + core::mem::offset_of!(SharedInfo, arch) as u64;
                    let max_pfn =
                        hv.mem().read_u64(at + core::mem::offset_of!(ArchSharedInfo, max_pfn) as u64);
                    Ok((max_pfn.max(1) - 1) as i64)
                }
            }
        }
        op::MEMORY_MAP => (|| {
            let mut map: XenMemoryMap = hv.guest().read_obj(arg)?;
            if map.nr_entries < 1 {
                return Err(Errno::EINVAL);
            }
            // A PV domain's pseudo-physical space: one RAM region of its maximum size.
            let ram =
                E820Entry { addr: 0, size: hv.cur_dom().max_pages * PAGE_SIZE as u64, type_: e820::RAM };
            hv.guest().write_obj(map.buffer, &ram)?;
            map.nr_entries = 1;
            hv.guest().write_obj(arg, &map)?;
            Ok(0)
        })(),
        op::MACHPHYS_MFN_LIST => machphys_mfn_list(hv, arg),
        op::MACHPHYS_MAPPING => {
            let m = XenMachphysMapping {
                v_start: MACH2PHYS_VIRT_START,
                v_end: MACH2PHYS_VIRT_END,
                max_mfn: hv.frames.max_mfn().0.saturating_sub(1),
            };
            hv.guest().write_obj(arg, &m).map(|()| 0)
        }
        _ => Err(Errno::ENOSYS),
    };
    res.into()
}

/// Bytes of the M2P one `XENMEM_machphys_mfn_list` extent covers (a 2 MiB superpage).
const M2P_EXTENT_BYTES: u64 = 2 << 20;

/// `XENMEM_machphys_mfn_list`: the first frame of each 2 MiB of the M2P table, up to
/// `max_extents` (the table is machine-contiguous here; Xen walks its mapping for them).
fn machphys_mfn_list<P: Platform>(hv: &mut Hypervisor<P>, arg: u64) -> Result<i64, Errno> {
    let mut l: XenMachphysMfnList = hv.guest().read_obj(arg)?;
    let table_bytes = hv.frames.max_mfn().0.saturating_mul(8);
    let extents = table_bytes.div_ceil(M2P_EXTENT_BYTES).min(u64::from(l.max_extents));
    let per_extent = M2P_EXTENT_BYTES / PAGE_SIZE as u64;
    for i in 0..extents {
        let mfn = hv.m2p_base.0 + i * per_extent;
        hv.guest().write_elem(l.extent_start, i, &mfn)?;
    }
    l.nr_extents = extents as u32;
    hv.guest().write_obj(arg, &l)?;
    Ok(0)
}

/// increase/decrease_reservation and populate_physmap over extents `[start, nr_extents)`.
fn reservation<P: Platform>(hv: &mut Hypervisor<P>, cmd: u32, start: u64, arg: u64) -> Hc {
    let me = hv.current().domid;
    let r: XenMemoryReservation = match hv.guest().read_obj(arg) {
        Ok(r) => r,
        Err(e) => return Hc::Ret(e.to_ret()),
    };
    let target = resolve_domid(r.domid, me);
    if target != me && !hv.cur_dom().privileged {
        return Hc::Ret(Errno::EPERM.to_ret());
    }
    if !hv.domains.contains_key(&target) {
        return Hc::Ret(Errno::ESRCH.to_ret());
    }
    if start > r.nr_extents {
        return Hc::Ret(Errno::EINVAL.to_ret());
    }
    let end = r.nr_extents.min(start.saturating_add(BATCH));
    let n = (end - start) as usize;
    let list = r.extent_start;
    // Inputs: the frames to give back (decrease) or the pfns to fill (populate).
    // Guest-sized buffers: a failed allocation is the guest's -ENOMEM, never a panic.
    let mut input: Vec<u64> = Vec::new();
    let mut out: Vec<u64> = Vec::new();
    let out_len = if cmd == op::DECREASE_RESERVATION { 0 } else { n };
    if input.try_reserve_exact(n).is_err() || out.try_reserve_exact(out_len).is_err() {
        return Hc::Ret(Errno::ENOMEM.to_ret());
    }
    out.resize(out_len, 0);
    if cmd != op::INCREASE_RESERVATION {
        for i in start..end {
            match hv.guest().read_elem::<u64>(list, i) {
                Ok(v) => input.push(v),
                Err(_) => break,
            }
        }
    }
    let (m2p_base, max_mfn) = (hv.m2p_base, hv.frames.max_mfn());
    let mem = hv.plat.mem();
    let mut m2p = |mfn, pfn| set_m2p(mem, m2p_base, max_mfn, mfn, pfn);
    let (done, result) = match cmd {
        op::INCREASE_RESERVATION => {
            mmu::increase_reservation(&mut hv.frames, mem, target, r.extent_order, &mut out, &mut m2p)
        }
        op::POPULATE_PHYSMAP => {
            let k = input.len();
            mmu::populate_physmap(
                &mut hv.frames,
                mem,
                target,
                r.extent_order,
                &input,
                &mut out[..k],
                &mut m2p,
            )
        }
        _ => mmu::decrease_reservation(&mut hv.frames, mem, target, r.extent_order, &input),
    };
    if hv.frames.take_flush_pending() {
        hv.request_flush(crate::mm::tlb::Flush::All);
    }
    // Report the new frames (PV guests learn their MFNs this way).
    if cmd != op::DECREASE_RESERVATION && list != 0 {
        for (i, mfn) in out.iter().take(done).enumerate() {
            if hv.guest().write_elem(list, start + i as u64, mfn).is_err() {
                return Hc::Ret((start + i as u64) as i64);
            }
        }
    }
    let total = start + done as u64;
    if result.is_err() || (done < n) || total >= r.nr_extents {
        // Xen returns the number of extents done; an error shows as a short count.
        return Hc::Ret(total as i64);
    }
    Hc::Continue([u64::from(cmd) | (total << MEMOP_EXTENT_SHIFT), arg, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use crate::hypercall::{dispatch, Hc};
    use crate::testkit::{run_as, two_domains, SCRATCH_VA};
    use hypercall_abi::hypercall::nr;
    use hypercall_abi::memory::{op, XenMachphysMfnList};
    use hypercall_abi::DomId;

    #[test]
    fn machphys_mfn_list_names_the_m2p_extents() {
        let mut hv = two_domains();
        run_as(&mut hv, DomId(1));
        let list = SCRATCH_VA + 0x100;
        let call = |hv: &mut crate::testkit::TestHv, max_extents: u32| {
            let l = XenMachphysMfnList { max_extents, extent_start: list, ..Default::default() };
            hv.guest().write_obj(SCRATCH_VA, &l).unwrap();
            let r =
                dispatch(hv, nr::MEMORY_OP, [u64::from(op::MACHPHYS_MFN_LIST), SCRATCH_VA, 0, 0, 0], None);
            assert_eq!(r, Hc::Ret(0));
            hv.guest().read_obj::<XenMachphysMfnList>(SCRATCH_VA).unwrap()
        };
        // The fake machine's M2P (4096 frames x 8 bytes) fits one 2 MiB extent.
        let l = call(&mut hv, 8);
        assert_eq!(l.nr_extents, 1);
        assert_eq!(hv.guest().read_obj::<u64>(list).unwrap(), hv.m2p_base.0);
        assert_eq!(call(&mut hv, 0).nr_extents, 0);
    }
}
