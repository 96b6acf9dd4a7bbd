//! `domctl` (`public/domctl.h`, Xen 4.19/4.20): the privileged domain-management hypercall the
//! toolstack in dom0 uses to create, size, start, inspect and destroy other domains.
//!
//! Every call carries [`XEN_DOMCTL_INTERFACE_VERSION`]; the hypervisor refuses other values
//! with -EACCES so that a toolstack built against another layout cannot corrupt it.

use crate::types::DomId;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.19 and 4.20 (bumped to 0x18 in 4.22).
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x0000_0017;

/// Size of the per-command payload union in [`XenDomctl`].
pub const XEN_DOMCTL_PAYLOAD_SIZE: usize = 128;

/// `XEN_DOMCTL_*` commands.
pub mod cmd {
    pub const CREATEDOMAIN: u32 = 1;
    pub const DESTROYDOMAIN: u32 = 2;
    pub const PAUSEDOMAIN: u32 = 3;
    pub const UNPAUSEDOMAIN: u32 = 4;
    pub const GETDOMAININFO: u32 = 5;
    pub const SETVCPUAFFINITY: u32 = 9;
    pub const SHADOW_OP: u32 = 10;
    pub const MAX_MEM: u32 = 11;
    pub const SETVCPUCONTEXT: u32 = 12;
    pub const GETVCPUCONTEXT: u32 = 13;
    pub const GETVCPUINFO: u32 = 14;
    pub const MAX_VCPUS: u32 = 15;
    pub const SCHEDULER_OP: u32 = 16;
    pub const SETDOMAINHANDLE: u32 = 17;
    pub const SETDEBUGGING: u32 = 18;
    pub const IRQ_PERMISSION: u32 = 19;
    pub const IOMEM_PERMISSION: u32 = 20;
    pub const IOPORT_PERMISSION: u32 = 21;
    pub const HYPERCALL_INIT: u32 = 22;
    pub const SETTIMEOFFSET: u32 = 24;
    pub const GETVCPUAFFINITY: u32 = 25;
    pub const RESUMEDOMAIN: u32 = 27;
    pub const SENDTRIGGER: u32 = 28;
    pub const SUBSCRIBE: u32 = 29;
    pub const SET_ADDRESS_SIZE: u32 = 35;
    pub const GET_ADDRESS_SIZE: u32 = 36;
    pub const SET_TARGET: u32 = 46;
    pub const SET_VIRQ_HANDLER: u32 = 66;
    pub const SOFT_RESET: u32 = 79;
    pub const GET_PAGING_MEMPOOL_SIZE: u32 = 85;
    pub const SET_PAGING_MEMPOOL_SIZE: u32 = 86;
}

/// `XEN_DOMCTL_CDF_*`: [`XenDomctlCreatedomain::flags`].
pub mod cdf {
    /// HVM guest (clear for PV).
    pub const HVM: u32 = 1 << 0;
    pub const HAP: u32 = 1 << 1;
    pub const S3_INTEGRITY: u32 = 1 << 2;
    pub const OOS_OFF: u32 = 1 << 3;
    /// The domain runs xenstored.
    pub const XS_DOMAIN: u32 = 1 << 4;
    pub const IOMMU: u32 = 1 << 5;
    pub const NESTED_VIRT: u32 = 1 << 6;
    pub const VPMU: u32 = 1 << 7;
}

/// `XEN_DOMINF_*`: [`XenDomctlGetdomaininfo::flags`].
pub mod dominf {
    /// The domain is being destroyed.
    pub const DYING: u32 = 1 << 0;
    pub const HVM_GUEST: u32 = 1 << 1;
    /// The guest has shut down; the reason is in the shutdown code field.
    pub const SHUTDOWN: u32 = 1 << 2;
    /// Paused by the toolstack.
    pub const PAUSED: u32 = 1 << 3;
    /// Blocked waiting for an event.
    pub const BLOCKED: u32 = 1 << 4;
    pub const RUNNING: u32 = 1 << 5;
    pub const DEBUGGED: u32 = 1 << 6;
    /// The domain is the xenstore domain.
    pub const XS_DOMAIN: u32 = 1 << 7;
    pub const HAP: u32 = 1 << 8;
    /// Shutdown code (a [`crate::sched::shutdown`] reason) lives at
    /// `(flags >> SHUTDOWNSHIFT) & SHUTDOWNMASK`.
    pub const SHUTDOWNSHIFT: u32 = 16;
    pub const SHUTDOWNMASK: u32 = 255;

    /// The shutdown code field of `flags`.
    pub const fn shutdown_code(flags: u32) -> u32 {
        (flags >> SHUTDOWNSHIFT) & SHUTDOWNMASK
    }
    /// `flags` with its shutdown code field set to `code`.
    pub const fn with_shutdown_code(flags: u32, code: u32) -> u32 {
        (flags & !(SHUTDOWNMASK << SHUTDOWNSHIFT)) | ((code & SHUTDOWNMASK) << SHUTDOWNSHIFT)
    }
}

/// `XEN_INVALID_MAX_VCPU_ID`: [`XenDomctlGetdomaininfo::max_vcpu_id`] of a domain without vCPUs.
pub const XEN_INVALID_MAX_VCPU_ID: u32 = !0;

/// `struct xen_domctl`: command header plus a 128-byte payload union (offset 16, because some
/// members hold 64-bit-aligned fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctl {
    /// [`cmd`] number.
    pub cmd: u32,
    /// Must be [`XEN_DOMCTL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// Target domain (IN/OUT for createdomain).
    pub domain: DomId,
    pub _pad: [u16; 3],
    /// The command's `xen_domctl_*` struct, at the start, zero-filled after it.
    pub u: [u8; XEN_DOMCTL_PAYLOAD_SIZE],
}
assert_layout!(XenDomctl, size = 144, cmd = 0, interface_version = 4, domain = 8, u = 16);

impl XenDomctl {
    /// A zeroed command for `domain` with the current interface version.
    pub fn new(cmd: u32, domain: DomId) -> Self {
        let mut d = Self::new_zeroed();
        d.cmd = cmd;
        d.interface_version = XEN_DOMCTL_INTERFACE_VERSION;
        d.domain = domain;
        d
    }

    /// A command carrying `payload` in `u`.
    pub fn with_payload<T: IntoBytes + Immutable>(cmd: u32, domain: DomId, payload: &T) -> Self {
        let mut d = Self::new(cmd, domain);
        d.set_payload(payload);
        d
    }

    /// Copies `payload` to the start of `u` and zeroes the rest.
    ///
    /// Compile-time error if `T` does not fit the union.
    pub fn set_payload<T: IntoBytes + Immutable>(&mut self, payload: &T) {
        const { assert!(core::mem::size_of::<T>() <= XEN_DOMCTL_PAYLOAD_SIZE) };
        let b = payload.as_bytes();
        self.u = [0; XEN_DOMCTL_PAYLOAD_SIZE];
        self.u[..b.len()].copy_from_slice(b);
    }

    /// Reads `u` as a `T` (a copy: the caller validates it before use).
    pub fn payload<T: FromBytes>(&self) -> T {
        const { assert!(core::mem::size_of::<T>() <= XEN_DOMCTL_PAYLOAD_SIZE) };
        // Cannot fail: `u` is at least `size_of::<T>()` bytes and `read_from_prefix` has no
        // alignment requirement.
        T::read_from_prefix(&self.u).map(|(t, _)| t).unwrap_or_else(|_| T::new_zeroed())
    }

    /// True if the caller was built against this interface version.
    pub const fn version_ok(&self) -> bool {
        self.interface_version == XEN_DOMCTL_INTERFACE_VERSION
    }
}

impl Default for XenDomctl {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// `struct xen_arch_domainconfig` (x86).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenArchDomainconfig {
    /// `XEN_X86_EMU_*` devices to emulate; 0 for a PV guest.
    pub emulation_flags: u32,
    /// `XEN_X86_*` miscellaneous flags.
    pub misc_flags: u32,
}
assert_layout!(XenArchDomainconfig, size = 8, emulation_flags = 0, misc_flags = 4);

/// `struct xen_domctl_createdomain` (4.19/4.20 layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlCreatedomain {
    pub ssidref: u32,
    /// `xen_domain_handle_t`: the toolstack's UUID for the domain.
    pub handle: [u8; 16],
    /// [`cdf`] bits.
    pub flags: u32,
    pub iommu_opts: u32,
    pub max_vcpus: u32,
    pub max_evtchn_port: u32,
    /// Negative: use the hypervisor default.
    pub max_grant_frames: i32,
    pub max_maptrack_frames: i32,
    /// Grant table version in the low 4 bits.
    pub grant_opts: u32,
    pub altp2m_opts: u32,
    pub vmtrace_size: u32,
    pub cpupool_id: u32,
    pub arch: XenArchDomainconfig,
}
assert_layout!(
    XenDomctlCreatedomain,
    size = 68,
    ssidref = 0,
    handle = 4,
    flags = 20,
    iommu_opts = 24,
    max_vcpus = 28,
    max_evtchn_port = 32,
    max_grant_frames = 36,
    max_maptrack_frames = 40,
    grant_opts = 44,
    altp2m_opts = 48,
    vmtrace_size = 52,
    cpupool_id = 56,
    arch = 60
);

/// `struct xen_domctl_getdomaininfo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlGetdomaininfo {
    /// Also echoed in [`XenDomctl::domain`].
    pub domain: DomId,
    pub pad1: u16,
    /// [`dominf`] bits and the shutdown code.
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub outstanding_pages: u64,
    pub shr_pages: u64,
    pub paged_pages: u64,
    /// GMFN of the shared_info page.
    pub shared_info_frame: u64,
    /// Total CPU time used, in ns.
    pub cpu_time: u64,
    pub nr_online_vcpus: u32,
    /// [`XEN_INVALID_MAX_VCPU_ID`] if the domain has no vCPUs.
    pub max_vcpu_id: u32,
    pub ssidref: u32,
    pub handle: [u8; 16],
    pub cpupool: u32,
    /// Guest physical address width.
    pub gpaddr_bits: u8,
    pub pad2: [u8; 7],
    pub arch_config: XenArchDomainconfig,
}
assert_layout!(
    XenDomctlGetdomaininfo,
    size = 112,
    domain = 0,
    flags = 4,
    tot_pages = 8,
    max_pages = 16,
    outstanding_pages = 24,
    shr_pages = 32,
    paged_pages = 40,
    shared_info_frame = 48,
    cpu_time = 56,
    nr_online_vcpus = 64,
    max_vcpu_id = 68,
    ssidref = 72,
    handle = 76,
    cpupool = 92,
    gpaddr_bits = 96,
    arch_config = 104
);

/// `struct xen_domctl_max_mem`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlMaxMem {
    pub max_memkb: u64,
}
assert_layout!(XenDomctlMaxMem, size = 8, max_memkb = 0);

/// `struct xen_domctl_vcpucontext` (set/getvcpucontext).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlVcpucontext {
    pub vcpu: u32,
    pub _pad: u32,
    /// Guest handle of a [`crate::xen::VcpuGuestContext`].
    pub ctxt: u64,
}
assert_layout!(XenDomctlVcpucontext, size = 16, vcpu = 0, ctxt = 8);

/// `struct xen_domctl_max_vcpus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlMaxVcpus {
    pub max: u32,
}
assert_layout!(XenDomctlMaxVcpus, size = 4, max = 0);

/// `struct xen_domctl_irq_permission`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlIrqPermission {
    pub pirq: u8,
    /// Non-zero grants, zero revokes.
    pub allow_access: u8,
}
assert_layout!(XenDomctlIrqPermission, size = 2, pirq = 0, allow_access = 1);

/// `struct xen_domctl_iomem_permission`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlIomemPermission {
    pub first_mfn: u64,
    /// Must be > 0.
    pub nr_mfns: u64,
    /// Non-zero grants, zero revokes.
    pub allow_access: u8,
    pub _pad: [u8; 7],
}
assert_layout!(XenDomctlIomemPermission, size = 24, first_mfn = 0, nr_mfns = 8, allow_access = 16);

/// `struct xen_domctl_ioport_permission`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlIoportPermission {
    pub first_port: u32,
    pub nr_ports: u32,
    pub allow_access: u8,
    pub _pad: [u8; 3],
}
assert_layout!(XenDomctlIoportPermission, size = 12, first_port = 0, nr_ports = 4, allow_access = 8);

/// `struct xen_domctl_address_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDomctlAddressSize {
    /// 32 or 64.
    pub size: u32,
}
assert_layout!(XenDomctlAddressSize, size = 4, size = 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let info = XenDomctlGetdomaininfo {
            domain: DomId(3),
            flags: dominf::with_shutdown_code(dominf::SHUTDOWN | dominf::PAUSED, 3),
            tot_pages: 0x1234,
            max_vcpu_id: XEN_INVALID_MAX_VCPU_ID,
            ..Default::default()
        };
        let d = XenDomctl::with_payload(cmd::GETDOMAININFO, DomId(3), &info);
        assert!(d.version_ok());
        assert_eq!(d.as_bytes()[16..18], [3, 0]);
        let back: XenDomctlGetdomaininfo = d.payload();
        assert_eq!(back, info);
        assert_eq!(dominf::shutdown_code(back.flags), 3);
        assert_eq!(back.flags & 0xffff, dominf::SHUTDOWN | dominf::PAUSED);
        // The tail of the union beyond the payload is zero.
        assert!(d.u[core::mem::size_of::<XenDomctlGetdomaininfo>()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn shutdown_code_is_masked() {
        let f = dominf::with_shutdown_code(u32::MAX, 0x1ff);
        assert_eq!(dominf::shutdown_code(f), 0xff);
        assert_eq!(f & 0xffff, 0xffff);
        assert_eq!(dominf::shutdown_code(dominf::with_shutdown_code(f, 1)), 1);
    }
}
