//! `vcpu_op` (`public/vcpu.h`): bringing vCPUs up and down, their timers, and where the
//! hypervisor publishes per-vCPU state (vcpu_info, runstate) in guest memory.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VCPUOP_*` commands of `vcpu_op(cmd, vcpuid, arg)`.
pub mod op {
    /// arg: `vcpu_guest_context` for a PV guest.
    pub const INITIALISE: u32 = 0;
    pub const UP: u32 = 1;
    pub const DOWN: u32 = 2;
    pub const IS_UP: u32 = 3;
    pub const GET_RUNSTATE_INFO: u32 = 4;
    pub const REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
    pub const SET_PERIODIC_TIMER: u32 = 6;
    pub const STOP_PERIODIC_TIMER: u32 = 7;
    pub const SET_SINGLESHOT_TIMER: u32 = 8;
    pub const STOP_SINGLESHOT_TIMER: u32 = 9;
    pub const REGISTER_VCPU_INFO: u32 = 10;
    pub const SEND_NMI: u32 = 11;
    pub const GET_PHYSID: u32 = 12;
    pub const REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
}

/// `RUNSTATE_*`: [`VcpuRunstateInfo::state`] and the indexes of its `time` array.
pub mod runstate {
    pub const RUNNING: i32 = 0;
    pub const RUNNABLE: i32 = 1;
    pub const BLOCKED: i32 = 2;
    pub const OFFLINE: i32 = 3;
    /// Set in `state_entry_time` while the hypervisor updates a registered runstate area
    /// (`XEN_RUNSTATE_UPDATE`, with `VMASST_TYPE_runstate_update_flag`).
    pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;
}

/// `VCPU_SSHOTTMR_*`: [`VcpuSetSingleshotTimer::flags`].
pub mod sshottmr {
    /// Fail with -ETIME if the timeout is already in the past.
    pub const FUTURE: u32 = 1 << 0;
}

/// `struct vcpu_set_singleshot_timer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time in ns.
    pub timeout_abs_ns: u64,
    /// [`sshottmr`] bits.
    pub flags: u32,
    pub _pad: u32,
}
assert_layout!(VcpuSetSingleshotTimer, size = 16, timeout_abs_ns = 0, flags = 8);

/// `struct vcpu_set_periodic_timer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuSetPeriodicTimer {
    pub period_ns: u64,
}
assert_layout!(VcpuSetPeriodicTimer, size = 8, period_ns = 0);

/// `struct vcpu_register_vcpu_info`: move this vCPU's `vcpu_info` out of shared_info into
/// guest frame `mfn` at `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    pub mfn: u64,
    /// Byte offset in the frame; the whole `vcpu_info` must fit in it.
    pub offset: u32,
    pub rsvd: u32,
}
assert_layout!(VcpuRegisterVcpuInfo, size = 16, mfn = 0, offset = 8, rsvd = 12);

/// `struct vcpu_runstate_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRunstateInfo {
    /// [`runstate`] value.
    pub state: i32,
    pub _pad: u32,
    /// System time when `state` was entered.
    pub state_entry_time: u64,
    /// Time spent in each [`runstate`], indexed by state.
    pub time: [u64; 4],
}
assert_layout!(VcpuRunstateInfo, size = 48, state = 0, state_entry_time = 8, time = 16);

/// `struct vcpu_register_runstate_memory_area` (also `vcpu_register_time_memory_area`):
/// where the hypervisor keeps a copy of the runstate (or time) info up to date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Guest virtual address (the union of handle, pointer and u64 in Xen).
    pub addr: u64,
}
assert_layout!(VcpuRegisterRunstateMemoryArea, size = 8, addr = 0);

/// `struct vcpu_get_physid`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuGetPhysid {
    /// OUT: APIC id in bits 0-31, ACPI id in bits 32-63.
    pub phys_id: u64,
}
assert_layout!(VcpuGetPhysid, size = 8, phys_id = 0);
