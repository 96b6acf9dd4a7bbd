//! `callback_op` (`public/callback.h`): how a PV kernel tells the hypervisor where its event,
//! failsafe, syscall and NMI entry points are, since it cannot program an IDT itself.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `CALLBACKOP_*` sub-operations of `callback_op`.
pub mod op {
    pub const REGISTER: u32 = 0;
    pub const UNREGISTER: u32 = 1;
}

/// `CALLBACKTYPE_*`: which entry point a [`CallbackRegister`] names.
pub mod callback_type {
    /// Event upcall (`hypervisor_callback`).
    pub const EVENT: u16 = 0;
    /// Entered when the hypervisor cannot load the guest's segment registers on return.
    pub const FAILSAFE: u16 = 1;
    /// 64-bit `syscall` from guest user mode.
    pub const SYSCALL: u16 = 2;
    /// The old number of `SYSENTER`, kept so that it is never reused.
    pub const SYSENTER_DEPRECATED: u16 = 3;
    pub const NMI: u16 = 4;
    pub const SYSENTER: u16 = 5;
    pub const SYSCALL32: u16 = 7;
}

/// `CALLBACKF_*` flags.
pub mod callbackf {
    /// Deliver with events masked (sets `evtchn_upcall_mask` on entry).
    pub const MASK_EVENTS: u16 = 1 << 0;
}

/// `struct callback_register`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CallbackRegister {
    /// [`callback_type`] (Xen's field is `type`).
    pub type_: u16,
    /// [`callbackf`] bits.
    pub flags: u16,
    pub _pad: u32,
    /// Guest virtual address of the entry point.
    pub address: u64,
}
assert_layout!(CallbackRegister, size = 16, type_ = 0, flags = 2, address = 8);

/// `struct callback_unregister`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CallbackUnregister {
    /// [`callback_type`] (Xen's field is `type`).
    pub type_: u16,
    pub _unused: u16,
}
assert_layout!(CallbackUnregister, size = 4, type_ = 0);
