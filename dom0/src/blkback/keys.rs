//! The xenstore side of a vbd backend as pure functions: what the backend publishes when it
//! announces itself and when it connects (`public/io/blkif.h`). The frontend's ring keys are
//! parsed by the split-driver framework ([`pv_guest_kernel::split::parse_ring_keys`]).

use super::DiskInfo;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::keys::*;
use hypercall_abi::io::blkif::vdisk;

pub use pv_guest_kernel::split::parse_decimal;

/// `virtual-device` of the first Xen disk (`xvda`: major 202, minor 0).
pub const XVDA: u32 = 51712;

/// Keys written at InitWait: the features the frontend reads before it sets its side up,
/// with rings of up to `2^max_ring_page_order` pages.
pub fn announce_keys(info: &DiskInfo, max_ring_page_order: u32) -> Vec<(&'static str, String)> {
    let mut keys = alloc::vec![
        (FEATURE_FLUSH_CACHE, String::from(if info.flush { "1" } else { "0" })),
        (FEATURE_BARRIER, String::from("0")),
        (FEATURE_DISCARD, String::from("0")),
        (FEATURE_PERSISTENT, String::from("1")),
        (MAX_RING_PAGE_ORDER, format!("{max_ring_page_order}")),
    ];
    if info.max_indirect_segments > 0 {
        keys.push((FEATURE_MAX_INDIRECT_SEGMENTS, format!("{}", info.max_indirect_segments)));
    }
    keys
}

/// Keys written when connecting: the disk's geometry and mode.
pub fn connect_keys(info: &DiskInfo) -> Vec<(&'static str, String)> {
    alloc::vec![
        (SECTORS, format!("{}", info.capacity)),
        (SECTOR_SIZE, String::from("512")),
        (PHYSICAL_SECTOR_SIZE, String::from("512")),
        (INFO, format!("{}", if info.readonly { vdisk::READONLY } else { 0 })),
        (MODE, String::from(if info.readonly { "r" } else { "w" })),
    ]
}

/// dom0's `vbd=` option: a comma-separated list of domain names or ids, the n-th getting the
/// n-th disk.
pub fn parse_vbd_option(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_disk() {
        let rw = DiskInfo { capacity: 131072, readonly: false, flush: true, max_indirect_segments: 0 };
        let k = connect_keys(&rw);
        assert!(k.contains(&("sectors", String::from("131072"))));
        assert!(k.contains(&("info", String::from("0"))) && k.contains(&("mode", String::from("w"))));
        assert!(announce_keys(&rw, 0).contains(&("feature-flush-cache", String::from("1"))));
        assert!(announce_keys(&rw, 4).contains(&("max-ring-page-order", String::from("4"))));
        assert!(!announce_keys(&rw, 0).iter().any(|k| k.0 == "feature-max-indirect-segments"));
        let ind = DiskInfo { max_indirect_segments: 64, ..rw };
        assert!(announce_keys(&ind, 0).contains(&("feature-max-indirect-segments", String::from("64"))));
        let ro = DiskInfo { capacity: 8, readonly: true, flush: false, max_indirect_segments: 0 };
        assert!(connect_keys(&ro).contains(&("info", String::from("4"))));
        assert!(connect_keys(&ro).contains(&("mode", String::from("r"))));
        assert!(announce_keys(&ro, 0).contains(&("feature-flush-cache", String::from("0"))));
    }

    #[test]
    fn vbd_option() {
        assert_eq!(parse_vbd_option("domU, 3,,x"), ["domU", "3", "x"]);
        assert!(parse_vbd_option("").is_empty());
    }
}
