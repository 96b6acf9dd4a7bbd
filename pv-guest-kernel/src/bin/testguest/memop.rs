//! `memop`: the `memory_op` queries a PV kernel makes at boot and `XENVER_get_features`
//! (issue 11 item 6), standalone (no xenstore, no second domain) so the same scenario runs
//! under Xen too. Each check prints one `memop: <key>=<value>` line; the host test asserts
//! Xen's results for a PV domain. The same observations are `RESULT` lines for the
//! differential run against Xen 4.17 (as values that do not depend on the domain's size).

use hypercall_abi::hypercall::nr;
use hypercall_abi::memory::{op, E820Entry, XenMachphysMapping, XenMachphysMfnList, XenMemoryMap};
use hypercall_abi::version::{op as xenver, XenFeatureInfo};
use hypercall_abi::DomId;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{hypercall, println};

use super::results::{self, Value};

/// `XENFEAT_dom0`: the hardware domain's feature bit.
const XENFEAT_DOM0: u32 = 1 << 11;
/// `XENFEAT_memory_op_vnode_supported`: vNUMA (`XENMEM_get_vnumainfo`).
const XENFEAT_MEMORY_OP_VNODE_SUPPORTED: u32 = 1 << 13;

fn memory_op<T>(cmd: u32, arg: &mut T) -> i64 {
    hypercall::call2::<{ nr::MEMORY_OP }>(u64::from(cmd), arg as *mut T as u64)
}

pub fn run(si: &StartInfo) {
    let mut me = DomId::SELF;
    println!("memop: nr_pages={}", si.nr_pages);
    let current = memory_op(op::CURRENT_RESERVATION, &mut me);
    println!("memop: current_reservation={current}");
    results::yes("current_reservation-is-nr_pages", current == si.nr_pages as i64);
    let maximum = memory_op(op::MAXIMUM_RESERVATION, &mut me);
    println!("memop: maximum_reservation={maximum}");
    results::yes("maximum_reservation-at-least-current", maximum >= current);
    let r = memory_op(op::MAXIMUM_GPFN, &mut me);
    println!("memop: maximum_gpfn={r}");
    results::ret("maximum_gpfn", r);
    let mut other = DomId(0x7fef);
    let r = memory_op(op::CURRENT_RESERVATION, &mut other);
    println!("memop: current_reservation_other={r}");
    results::ret("current_reservation_other", r);
    let positive = memory_op(op::MAXIMUM_RAM_PAGE, &mut 0u64) > 0;
    println!("memop: maximum_ram_page_positive={positive}");
    results::yes("maximum_ram_page_positive", positive);
    let mut m = XenMachphysMapping::default();
    let r = memory_op(op::MACHPHYS_MAPPING, &mut m);
    println!("memop: machphys_mapping={r} v_start={:#x} v_end={:#x}", m.v_start, m.v_end);
    results::ret("machphys_mapping", r);
    results::emit("machphys_mapping.v_start", Value::Hex(m.v_start));
    results::emit("machphys_mapping.v_end", Value::Hex(m.v_end));
    let mut extents = [0u64; 4];
    let mut l = XenMachphysMfnList {
        max_extents: 4,
        extent_start: extents.as_mut_ptr() as u64,
        ..Default::default()
    };
    let r = memory_op(op::MACHPHYS_MFN_LIST, &mut l);
    let listed = l.nr_extents > 0 && extents[0] != 0;
    println!("memop: machphys_mfn_list={r} nr_extents_positive={listed}");
    results::ret("machphys_mfn_list", r);
    results::yes("machphys_mfn_list.nr_extents_positive", listed);
    let mut e820 = [E820Entry::default(); 8];
    let mut map = XenMemoryMap { nr_entries: 8, buffer: e820.as_mut_ptr() as u64, ..Default::default() };
    let r = memory_op(op::MEMORY_MAP, &mut map);
    println!("memop: memory_map={r}");
    results::ret("memory_map", r);
    let mut fi = XenFeatureInfo { submap_idx: 0, submap: 0 };
    let r =
        hypercall::call2::<{ nr::XEN_VERSION }>(u64::from(xenver::GET_FEATURES), &mut fi as *mut _ as u64);
    println!("memop: get_features={r} submap0={:#x}", fi.submap);
    results::ret("get_features", r);
    let apart = XENFEAT_DOM0 | XENFEAT_MEMORY_OP_VNODE_SUPPORTED;
    results::emit("get_features.submap0-others", Value::Hex(u64::from(fi.submap & !apart)));
    results::yes("get_features.dom0", fi.submap & XENFEAT_DOM0 != 0);
    results::yes(
        "get_features.memory_op_vnode_supported",
        fi.submap & XENFEAT_MEMORY_OP_VNODE_SUPPORTED != 0,
    );
    println!("TEST memop PASS");
}
