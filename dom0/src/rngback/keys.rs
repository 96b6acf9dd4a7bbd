//! The xenstore side of a vrng backend as pure functions: what it publishes when it connects
//! (`hypercall_abi::io::rngif`). The frontend's ring keys are parsed by the split-driver
//! framework ([`pv_guest_kernel::split::parse_ring_keys`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::rngif::MAX_REQUEST;
use hypercall_abi::PAGE_SIZE;

/// Keys written when connecting: the largest request answered.
pub fn connect_keys() -> Vec<(&'static str, String)> {
    alloc::vec![(MAX_REQUEST, format!("{PAGE_SIZE}"))]
}

/// dom0's `vrng=` option: `none`, or a comma-separated list of domain names or ids (`None`:
/// every domain).
pub fn parse_vrng_option(v: Option<&str>) -> Option<Vec<String>> {
    crate::domains::parse_domain_list(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_option() {
        assert_eq!(connect_keys(), [(MAX_REQUEST, String::from("4096"))]);
        assert_eq!(parse_vrng_option(None), None);
        assert_eq!(parse_vrng_option(Some("none")), Some(Vec::new()));
        assert_eq!(parse_vrng_option(Some("a, 2,,b")), Some(alloc::vec!["a".into(), "2".into(), "b".into()]));
    }
}
