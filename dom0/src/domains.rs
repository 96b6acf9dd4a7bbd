//! What dom0's toolstack knows about domains, from what the hypervisor says
//! (`XEN_DOMCTL_getdomaininfo`): the list of domUs, each one's name, and whether and how it
//! ended. The hypercall is the kernel's; the logic is here, host-tested.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::domctl::{dominf, XenDomctlGetdomaininfo, XEN_INVALID_MAX_VCPU_ID};
use hypercall_abi::sched::shutdown;
use hypercall_abi::DomId;

/// Every domain but dom0, in id order, given `first_at(id)`: the first domain whose id is
/// at least `id` (what `getdomaininfo` answers), `None` when there is none. An answer below
/// the id asked for, or a reserved id, ends the walk (a confused hypervisor must not make it
/// loop). Allocates nothing.
pub fn walk<E>(
    mut first_at: impl FnMut(DomId) -> Result<Option<XenDomctlGetdomaininfo>, E>,
) -> impl Iterator<Item = Result<XenDomctlGetdomaininfo, E>> {
    let mut next = Some(1u16);
    core::iter::from_fn(move || {
        let from = next.take().filter(|&n| n < DomId::FIRST_RESERVED.0)?;
        match first_at(DomId(from)) {
            Err(e) => Some(Err(e)),
            Ok(Some(info)) if info.domain.0 >= from && info.domain.is_real() => {
                next = Some(info.domain.0 + 1);
                Some(Ok(info))
            }
            Ok(_) => None,
        }
    })
}

/// [`walk`], collected.
pub fn domus<E>(
    first_at: impl FnMut(DomId) -> Result<Option<XenDomctlGetdomaininfo>, E>,
) -> Result<Vec<XenDomctlGetdomaininfo>, E> {
    walk(first_at).collect()
}

/// How many vCPUs the domain has (`max_vcpu_id + 1`; none for [`XEN_INVALID_MAX_VCPU_ID`]),
/// for the toolstack's `cpu/<n>/availability` nodes. Bounded by
/// [`XEN_LEGACY_MAX_VCPUS`](hypercall_abi::xen::XEN_LEGACY_MAX_VCPUS) (far above what
/// microvisor builds), so a confused answer cannot make dom0 fill the store.
pub fn vcpu_count(info: &XenDomctlGetdomaininfo) -> u32 {
    let max = hypercall_abi::xen::XEN_LEGACY_MAX_VCPUS as u32;
    match info.max_vcpu_id {
        XEN_INVALID_MAX_VCPU_ID => 0,
        id => id.saturating_add(1).min(max),
    }
}

/// True once the domain has shut down or is being destroyed.
pub fn gone(flags: u32) -> bool {
    flags & (dominf::SHUTDOWN | dominf::DYING) != 0
}

/// How a domain ended (or that it did not), for the log.
pub fn describe(flags: u32) -> String {
    if flags & dominf::SHUTDOWN != 0 {
        let code = dominf::shutdown_code(flags);
        format!("shut down ({}, code {code})", shutdown::name(code))
    } else if flags & dominf::DYING != 0 {
        String::from("dying")
    } else if flags & dominf::PAUSED != 0 {
        String::from("paused")
    } else {
        String::from("still running")
    }
}

/// An option naming domains (`vrng=`, `vif=`): `none`, or a comma-separated list of names or
/// ids; `None` (option absent): every domain.
pub fn parse_domain_list(v: Option<&str>) -> Option<Vec<String>> {
    match v {
        Some("none") => Some(Vec::new()),
        Some(list) => {
            Some(list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
        None => None,
    }
}

/// True if `who` (from an option) names the domain: its name or its id.
pub fn names(who: &str, name: &str, domid: DomId) -> bool {
    who == name || who.parse::<u16>() == Ok(domid.0)
}

/// The domain's name from its `xen_domain_handle_t` (microvisor puts the boot module's
/// `name=` there, NUL-padded); a handle that is not such a name (all zero, as Xen's UUIDs
/// are for dom0less domains, or bytes a name cannot hold) gives init-dom0less's
/// `dom0less-<id>`.
pub fn domain_name(handle: &[u8; 16], domid: DomId) -> String {
    let len = handle.iter().position(|&b| b == 0).unwrap_or(handle.len());
    let name = &handle[..len];
    let ok = !name.is_empty()
        && name.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && handle[len..].iter().all(|&b| b == 0);
    match core::str::from_utf8(name) {
        Ok(s) if ok => String::from(s),
        _ => format!("dom0less-{}", domid.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(s: &[u8]) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..s.len()].copy_from_slice(s);
        h
    }

    fn info(id: u16, flags: u32) -> XenDomctlGetdomaininfo {
        XenDomctlGetdomaininfo { domain: DomId(id), flags, ..Default::default() }
    }

    #[test]
    fn enumeration_walks_up_and_stops_on_nonsense() {
        let ids = [1u16, 2, 5];
        let first_at =
            |d: DomId| -> Result<_, ()> { Ok(ids.iter().find(|&&i| i >= d.0).map(|&i| info(i, 0))) };
        let got: Vec<u16> = domus(first_at).unwrap().iter().map(|i| i.domain.0).collect();
        assert_eq!(got, [1, 2, 5]);
        // A hypervisor answering the same domain again, or a reserved id, ends the walk.
        assert_eq!(domus(|_| -> Result<_, ()> { Ok(Some(info(1, 0))) }).unwrap().len(), 1);
        assert!(domus(|_| -> Result<_, ()> { Ok(Some(info(DomId::FIRST_RESERVED.0, 0))) })
            .unwrap()
            .is_empty());
        assert_eq!(domus(|_| -> Result<Option<XenDomctlGetdomaininfo>, u8> { Err(7) }), Err(7));
    }

    #[test]
    fn endings() {
        assert!(!gone(0) && gone(dominf::DYING));
        assert_eq!(describe(dominf::SHUTDOWN), "shut down (poweroff, code 0)");
        assert_eq!(describe(dominf::DYING), "dying");
        assert_eq!(describe(0), "still running");
        assert!(names("tg", "tg", DomId(3)) && names("3", "tg", DomId(3)) && !names("4", "tg", DomId(3)));
    }

    #[test]
    fn vcpu_counts() {
        let with = |max_vcpu_id| XenDomctlGetdomaininfo { max_vcpu_id, ..info(1, 0) };
        assert_eq!(vcpu_count(&with(0)), 1);
        assert_eq!(vcpu_count(&with(3)), 4);
        assert_eq!(vcpu_count(&with(XEN_INVALID_MAX_VCPU_ID)), 0);
        assert_eq!(vcpu_count(&with(XEN_INVALID_MAX_VCPU_ID - 1)), 32, "bounded");
    }

    #[test]
    fn names_from_handles() {
        assert_eq!(domain_name(&handle(b"domU"), DomId(1)), "domU");
        assert_eq!(domain_name(&handle(b"web-1.test_x"), DomId(1)), "web-1.test_x");
        assert_eq!(domain_name(&[b'a'; 16], DomId(1)), "aaaaaaaaaaaaaaaa");
        assert_eq!(domain_name(&[0; 16], DomId(3)), "dom0less-3");
        // A UUID, or a name with junk after its NUL, or characters a name cannot hold.
        assert_eq!(domain_name(&[0x9f; 16], DomId(2)), "dom0less-2");
        let mut h = handle(b"ab");
        h[5] = 7;
        assert_eq!(domain_name(&h, DomId(2)), "dom0less-2");
        assert_eq!(domain_name(&handle(b"a b"), DomId(2)), "dom0less-2");
        assert_eq!(domain_name(&handle(b"\x1b[2J"), DomId(2)), "dom0less-2");
    }
}
