//! The xenstore side of a vif backend as pure functions (`public/io/netif.h`): what netback
//! publishes when it announces itself, what it requires of the frontend's keys, and dom0's
//! `vif=` option. The frontend's ring keys are parsed by the split-driver framework
//! ([`pv_guest_kernel::split::parse_ring_keys`], with netif's two ring keys).

use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::netif::keys::*;
use pv_guest_kernel::split::{Keys, Store};

/// Keys written at InitWait: what Linux's netfront looks for before it sets its side up
/// (`feature-rx-copy` is mandatory for it; `feature-sg` and `feature-ipv6-csum-offload` keep
/// its scatter-gather and IPv6 checksum offload on). Not offered: GSO, multicast control,
/// split event channels, more than one queue (the frontend then uses one ring pair and one
/// event channel, writing its keys flat).
pub fn announce_keys() -> Vec<(&'static str, String)> {
    [(FEATURE_RX_COPY, "1"), (FEATURE_RX_FLIP, "0"), (FEATURE_SG, "1"), (FEATURE_IPV6_CSUM_OFFLOAD, "1")]
        .into_iter()
        .map(|(k, v)| (k, String::from(v)))
        .collect()
}

/// What the frontend asked for (its keys), checked at connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontFeatures {
    pub sg: bool,
    pub rx_notify: bool,
    /// `feature-no-csum-offload`: it cannot take frames whose checksum is blank (it gets
    /// none: every frame is completed at ingress).
    pub no_csum_offload: bool,
}

/// Why a frontend's keys were refused.
pub const NEED_RX_COPY: &str = "frontend did not request rx-copy (the only receive mode)";
pub const NO_MULTI_QUEUE: &str = "multi-queue-num-queues other than 1 (multi-queue not offered)";

/// Checks the frontend's keys: it must ask for copying receive (`request-rx-copy = 1`) and,
/// if it names a queue count, one queue.
pub fn front_features<S: Store + ?Sized>(keys: &mut Keys<'_, S>) -> Result<FrontFeatures, &'static str> {
    if !keys.flag(REQUEST_RX_COPY) {
        return Err(NEED_RX_COPY);
    }
    if keys.raw(MULTI_QUEUE_NUM_QUEUES).is_some() && keys.number(MULTI_QUEUE_NUM_QUEUES) != Some(1) {
        return Err(NO_MULTI_QUEUE);
    }
    Ok(FrontFeatures {
        sg: keys.flag(FEATURE_SG),
        rx_notify: keys.flag(FEATURE_RX_NOTIFY),
        no_csum_offload: keys.flag(FEATURE_NO_CSUM_OFFLOAD),
    })
}

/// dom0's `vif=` option: `none`, or a comma-separated list of domain names or ids (`None`:
/// every domain).
pub fn parse_vif_option(v: Option<&str>) -> Option<Vec<String>> {
    crate::domains::parse_domain_list(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_guest_kernel::split::model::ModelStore;

    #[test]
    fn the_frontends_keys_are_checked() {
        let mut s = ModelStore::default();
        let check = |s: &mut ModelStore| front_features(&mut Keys::new(s, "/fe"));
        assert_eq!(check(&mut s), Err(NEED_RX_COPY));
        s.set("/fe/request-rx-copy", "yes");
        assert_eq!(check(&mut s), Err(NEED_RX_COPY), "strictly 1");
        s.set("/fe/request-rx-copy", "1");
        assert_eq!(check(&mut s), Ok(FrontFeatures::default()));
        for bad in ["2", "0", "", "1 "] {
            s.set("/fe/multi-queue-num-queues", bad);
            assert_eq!(check(&mut s), Err(NO_MULTI_QUEUE), "{bad:?}");
        }
        s.set("/fe/multi-queue-num-queues", "1");
        for k in ["feature-sg", "feature-rx-notify", "feature-no-csum-offload"] {
            s.set(&alloc::format!("/fe/{k}"), "1");
        }
        assert_eq!(check(&mut s), Ok(FrontFeatures { sg: true, rx_notify: true, no_csum_offload: true }));
        let k: Vec<&str> = announce_keys().iter().map(|k| k.0).collect();
        assert_eq!(k, ["feature-rx-copy", "feature-rx-flip", "feature-sg", "feature-ipv6-csum-offload"]);
        assert_eq!(parse_vif_option(Some("none")), Some(Vec::new()));
        assert_eq!(parse_vif_option(Some("a, 2")), Some(alloc::vec!["a".into(), "2".into()]));
        assert_eq!(parse_vif_option(None), None);
    }
}
