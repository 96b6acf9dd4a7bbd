//! The toolstack's hypercalls, typed: what dom0 asks the hypervisor about other domains
//! (`XEN_DOMCTL_getdomaininfo`, `HVMOP_get_param`) and destroying one. The logic around them
//! (enumeration, names, how a domain ended) is the library's [`dom0::domains`].

use alloc::vec::Vec;
use hypercall_abi::domctl::{cmd, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::hvm::{op as hvmop, XenHvmParam};
use hypercall_abi::hypercall::nr;
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::hypercall;

/// The first domain whose id is at least `d` (`getdomaininfo`'s answer), `None` if none is.
pub fn first_at(d: DomId) -> Result<Option<XenDomctlGetdomaininfo>, Errno> {
    let mut op = XenDomctl::new(cmd::GETDOMAININFO, d);
    match hypercall::check(hypercall::domctl(&mut op)) {
        Ok(_) => Ok(Some(op.payload())),
        Err(Errno::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Domain `d` itself, if it exists.
pub fn info(d: DomId) -> Option<XenDomctlGetdomaininfo> {
    first_at(d).ok().flatten().filter(|i| i.domain == d)
}

/// Every domain but dom0.
pub fn domus() -> Result<Vec<XenDomctlGetdomaininfo>, Errno> {
    dom0::domains::domus(first_at)
}

/// True if `d` exists and has not shut down.
pub fn alive(d: DomId) -> bool {
    info(d).is_some_and(|i| !dom0::domains::gone(i.flags))
}

/// Destroys `d` (`XEN_DOMCTL_destroydomain`).
pub fn destroy(d: DomId) -> Result<(), Errno> {
    let mut op = XenDomctl::new(cmd::DESTROYDOMAIN, d);
    hypercall::check(hypercall::domctl(&mut op)).map(drop)
}

/// `HVMOP_get_param` of another domain.
pub fn hvm_param(domid: DomId, index: u32) -> Result<u64, Errno> {
    let mut p = XenHvmParam { domid, _pad: 0, index, value: 0 };
    hypercall::check(hypercall::hypercall5(
        nr::HVM_OP,
        u64::from(hvmop::GET_PARAM),
        hypercall::ptr_mut(&mut p),
        0,
        0,
        0,
    ))?;
    Ok(p.value)
}
