//! `hvm_op` parameters (`public/hvm/hvm_op.h`, `public/hvm/params.h`): the subset dom0 uses to
//! learn a boot-built domain's xenstore and console rings, as Xen's `init-dom0less` does with
//! `HVMOP_get_param` (for a PV domain the "pfn" values are machine frame numbers).

use crate::types::DomId;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `HVMOP_*` numbers.
pub mod op {
    pub const SET_PARAM: u32 = 0;
    pub const GET_PARAM: u32 = 1;
}

/// `HVM_PARAM_*` indexes.
pub mod param {
    pub const CALLBACK_IRQ: u32 = 0;
    pub const STORE_PFN: u32 = 1;
    pub const STORE_EVTCHN: u32 = 2;
    pub const CONSOLE_PFN: u32 = 17;
    pub const CONSOLE_EVTCHN: u32 = 18;
}

/// `struct xen_hvm_param`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenHvmParam {
    pub domid: DomId,
    pub _pad: u16,
    pub index: u32,
    pub value: u64,
}
assert_layout!(XenHvmParam, size = 16, domid = 0, index = 4, value = 8);
