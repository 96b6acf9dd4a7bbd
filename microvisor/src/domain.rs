//! Domains: identity, privilege, lifecycle state, vCPUs, the shared_info page, event channels
//! and the per-domain console line buffer.

use crate::console::{LineBuffer, RateLimit};
use crate::event::{Bitmaps, EventChannels};
use crate::grant::{GrantTable, MAX_GRANT_FRAMES};
use crate::vcpu::Vcpu;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::sched::shutdown;
use hypercall_abi::xen::SharedInfo;
use hypercall_abi::{DomId, Errno, Mfn};

/// Why a domain stopped (`SHUTDOWN_*`), or that the hypervisor crashed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    Poweroff = shutdown::POWEROFF as isize,
    Reboot = shutdown::REBOOT as isize,
    Suspend = shutdown::SUSPEND as isize,
    Crash = shutdown::CRASH as isize,
    Watchdog = shutdown::WATCHDOG as isize,
    SoftReset = shutdown::SOFT_RESET as isize,
}

impl ShutdownReason {
    /// Decodes a `SCHEDOP_shutdown` reason.
    pub fn from_code(code: u32) -> Option<ShutdownReason> {
        Some(match code {
            shutdown::POWEROFF => ShutdownReason::Poweroff,
            shutdown::REBOOT => ShutdownReason::Reboot,
            shutdown::SUSPEND => ShutdownReason::Suspend,
            shutdown::CRASH => ShutdownReason::Crash,
            shutdown::WATCHDOG => ShutdownReason::Watchdog,
            shutdown::SOFT_RESET => ShutdownReason::SoftReset,
            _ => return None,
        })
    }

    /// The `SHUTDOWN_*` number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Xen's name for it.
    pub fn name(self) -> &'static str {
        shutdown::name(self.code())
    }
}

/// Lifecycle of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    /// Built, vCPUs may run.
    Running,
    /// Paused by the toolstack.
    Paused,
    /// Shut down (its vCPUs no longer run); the toolstack may still inspect and destroy it.
    Shutdown(ShutdownReason),
    /// Being destroyed: resources are being released.
    Dying,
}

/// Hypervisor heap a domU's state may take beyond its fixed part (grant-table active entries,
/// maptrack, GDT copies).
pub const DOMU_HV_MEM: usize = 512 << 10;
/// The same for dom0, which maps every domU's grants for its backends.
pub const DOM0_HV_MEM: usize = 2 << 20;

/// An allowance of hypervisor heap: charged before each growth it covers (refused past the
/// limit with `-ENOMEM`), given back as the state shrinks. A domain's quota bounds what its
/// hypercalls can make the hypervisor allocate; the hypervisor's pool of quotas bounds the
/// sum, so no set of domains can exhaust the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemQuota {
    used: usize,
    limit: usize,
}

impl MemQuota {
    pub const fn new(limit: usize) -> MemQuota {
        MemQuota { used: 0, limit }
    }

    /// Takes `bytes` of the allowance, or refuses with `-ENOMEM` leaving it unchanged.
    pub fn charge(&mut self, bytes: usize) -> Result<(), Errno> {
        match self.used.checked_add(bytes) {
            Some(n) if n <= self.limit => {
                self.used = n;
                Ok(())
            }
            _ => Err(Errno::ENOMEM),
        }
    }

    /// Gives back `bytes` charged earlier.
    pub fn uncharge(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.used, "uncharging more than was charged");
        self.used = self.used.saturating_sub(bytes);
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the limit (host tests simulating a smaller pool).
    #[cfg(test)]
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }
}

/// Per-domain configuration given at build time.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    pub name: String,
    pub privileged: bool,
    pub max_pages: u64,
    pub max_vcpus: u32,
    pub max_evtchn_ports: u32,
}

/// A PV domain.
pub struct Domain {
    pub id: DomId,
    pub name: String,
    /// dom0: may use privileged operations (domctl, foreign mappings, device access).
    pub privileged: bool,
    pub state: DomainState,
    pub vcpus: Vec<Box<Vcpu>>,
    /// The shared_info page (hypervisor-allocated, shared with the guest).
    pub shared_info: Mfn,
    pub evtchn: EventChannels,
    /// `vm_assist` bits enabled.
    pub vm_assist: u64,
    pub max_pages: u64,
    pub console: LineBuffer,
    /// How much of its `console_io` output reaches the UART (unlimited for dom0).
    pub console_limit: RateLimit,
    /// Machine frame of the console ring and its port (domUs), for the dom0 hand-over.
    pub console_ring: Option<(Mfn, u32)>,
    /// Machine frame of the xenstore ring and its port (domUs).
    pub store_ring: Option<(Mfn, u32)>,
    /// Its grant table and the mappings it holds of other domains' grants.
    pub grant: GrantTable,
    /// The heap its hypercalls may make the hypervisor allocate (see [`MemQuota`]).
    pub hv_mem: MemQuota,
    /// What the hypervisor's pool committed to it at creation ([`Domain::commitment`]).
    pub hv_commitment: usize,
    /// The port-I/O index registers emulated for it.
    pub io: crate::cpu_state::IoLatches,
}

impl Domain {
    pub fn new(id: DomId, cfg: &DomainConfig, shared_info: Mfn) -> Domain {
        Domain {
            id,
            name: cfg.name.clone(),
            privileged: cfg.privileged,
            state: DomainState::Running,
            vcpus: (0..cfg.max_vcpus)
                .map(|i| {
                    let vcpu_info = shared_info.addr() + SharedInfo::vcpu_info_offset(i as usize) as u64;
                    Box::new(Vcpu::new(i, vcpu_info))
                })
                .collect(),
            shared_info,
            evtchn: EventChannels::new(cfg.max_vcpus, cfg.max_evtchn_ports),
            vm_assist: 0,
            max_pages: cfg.max_pages,
            console: LineBuffer::default(),
            console_limit: if cfg.privileged { RateLimit::unlimited() } else { RateLimit::default() },
            console_ring: None,
            store_ring: None,
            grant: GrantTable::new(MAX_GRANT_FRAMES),
            hv_mem: MemQuota::new(if cfg.privileged { DOM0_HV_MEM } else { DOMU_HV_MEM }),
            hv_commitment: 0,
            io: crate::cpu_state::IoLatches::default(),
        }
    }

    /// Heap the hypervisor commits to a domain with `cfg` when it creates it: its fixed part
    /// (the domain, its vCPUs, its port table) and its [`MemQuota`].
    pub fn commitment(cfg: &DomainConfig) -> usize {
        let vcpus = cfg.max_vcpus as usize;
        core::mem::size_of::<Domain>()
            + vcpus * (core::mem::size_of::<Vcpu>() + core::mem::size_of::<Box<Vcpu>>())
            + EventChannels::commitment(vcpus, cfg.max_evtchn_ports)
            + if cfg.privileged { DOM0_HV_MEM } else { DOMU_HV_MEM }
    }

    /// The 2-level event bitmaps in this domain's shared_info.
    pub fn bitmaps(&self) -> Bitmaps {
        Bitmaps { shared_info: self.shared_info }
    }

    /// True while the domain's vCPUs may run.
    pub fn is_alive(&self) -> bool {
        self.state == DomainState::Running
    }

    pub fn vcpu(&self, id: u32) -> Option<&Vcpu> {
        self.vcpus.get(id as usize).map(|b| &**b)
    }

    pub fn vcpu_mut(&mut self, id: u32) -> Option<&mut Vcpu> {
        self.vcpus.get_mut(id as usize).map(|b| &mut **b)
    }
}

/// All domains, indexed by domain id. Ids are small and allocated densely from 0, so a
/// table makes finding the running domain — done several times per hypercall — a bounds
/// check and an index instead of a tree search. The method names follow `BTreeMap`'s.
#[derive(Default)]
pub struct Domains {
    slots: Vec<Option<Box<Domain>>>,
    len: usize,
}

impl Domains {
    pub fn new() -> Domains {
        Domains::default()
    }

    #[inline]
    pub fn get(&self, id: &DomId) -> Option<&Domain> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_deref())
    }

    #[inline]
    pub fn get_mut(&mut self, id: &DomId) -> Option<&mut Domain> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_deref_mut())
    }

    pub fn contains_key(&self, id: &DomId) -> bool {
        self.get(id).is_some()
    }

    /// Adds `d` under `id` (replacing any domain there).
    pub fn insert(&mut self, id: DomId, d: Domain) {
        let i = id.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(Box::new(d)).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, id: &DomId) -> Option<Domain> {
        let d = self.slots.get_mut(id.0 as usize)?.take()?;
        self.len -= 1;
        Some(*d)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Domains in id order.
    pub fn values(&self) -> impl Iterator<Item = &Domain> + '_ {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Domain> + '_ {
        self.slots.iter_mut().filter_map(|s| s.as_deref_mut())
    }

    pub fn keys(&self) -> impl Iterator<Item = DomId> + '_ {
        self.values().map(|d| d.id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (DomId, &Domain)> + '_ {
        self.values().map(|d| (d.id, d))
    }

    /// One past the highest id a domain may have now (ids are below it).
    pub fn id_bound(&self) -> u16 {
        self.slots.len() as u16
    }

    /// The first domain whose id is at least `from` (how `getdomaininfo` enumerates).
    pub fn first_from(&self, from: DomId) -> Option<&Domain> {
        self.slots.iter().skip(from.0 as usize).find_map(|s| s.as_deref())
    }
}

impl core::ops::Index<&DomId> for Domains {
    type Output = Domain;
    #[inline]
    fn index(&self, id: &DomId) -> &Domain {
        self.get(id).expect("no such domain")
    }
}
