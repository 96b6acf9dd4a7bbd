//! `memop`: the `memory_op` queries a PV kernel makes at boot and `XENVER_get_features`
//! (issue 11 item 6), standalone (no xenstore, no second domain) so the same scenario runs
//! under Xen too. Each check prints one `memop: <key>=<value>` line; the host test asserts
//! Xen's results for a PV domain.

use hypercall_abi::hypercall::nr;
use hypercall_abi::memory::{op, E820Entry, XenMachphysMapping, XenMachphysMfnList, XenMemoryMap};
use hypercall_abi::version::{op as xenver, XenFeatureInfo};
use hypercall_abi::DomId;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{hypercall, println};

fn memory_op<T>(cmd: u32, arg: &mut T) -> i64 {
    hypercall::call2::<{ nr::MEMORY_OP }>(u64::from(cmd), arg as *mut T as u64)
}

pub fn run(si: &StartInfo) {
    let mut me = DomId::SELF;
    println!("memop: nr_pages={}", si.nr_pages);
    println!("memop: current_reservation={}", memory_op(op::CURRENT_RESERVATION, &mut me));
    println!("memop: maximum_reservation={}", memory_op(op::MAXIMUM_RESERVATION, &mut me));
    println!("memop: maximum_gpfn={}", memory_op(op::MAXIMUM_GPFN, &mut me));
    let mut other = DomId(0x7fef);
    println!("memop: current_reservation_other={}", memory_op(op::CURRENT_RESERVATION, &mut other));
    println!("memop: maximum_ram_page_positive={}", memory_op(op::MAXIMUM_RAM_PAGE, &mut 0u64) > 0);
    let mut m = XenMachphysMapping::default();
    let r = memory_op(op::MACHPHYS_MAPPING, &mut m);
    println!("memop: machphys_mapping={r} v_start={:#x} v_end={:#x}", m.v_start, m.v_end);
    let mut extents = [0u64; 4];
    let mut l = XenMachphysMfnList {
        max_extents: 4,
        extent_start: extents.as_mut_ptr() as u64,
        ..Default::default()
    };
    let r = memory_op(op::MACHPHYS_MFN_LIST, &mut l);
    println!("memop: machphys_mfn_list={r} nr_extents_positive={}", l.nr_extents > 0 && extents[0] != 0);
    let mut e820 = [E820Entry::default(); 8];
    let mut map = XenMemoryMap { nr_entries: 8, buffer: e820.as_mut_ptr() as u64, ..Default::default() };
    let r = memory_op(op::MEMORY_MAP, &mut map);
    println!("memop: memory_map={r}");
    let mut fi = XenFeatureInfo { submap_idx: 0, submap: 0 };
    let r =
        hypercall::call2::<{ nr::XEN_VERSION }>(u64::from(xenver::GET_FEATURES), &mut fi as *mut _ as u64);
    println!("memop: get_features={r} submap0={:#x}", fi.submap);
    println!("TEST memop PASS");
}
