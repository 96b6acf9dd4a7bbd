//! The PV kernel runtime: what every microvisor guest kernel (dom0 and the domUs) needs to
//! boot from `start_info` and talk to the hypervisor through Xen's x86_64 PV ABI — the entry
//! point and ELF notes ([`pv_kernel!`]), hypercalls through the hypercall page, the console,
//! traps and event upcalls, the PV clock, page-table updates and a page allocator.
//!
//! Pure logic (the event scan, clock arithmetic, page-table indices, the allocator, layout
//! and command-line parsing) is host-tested; the parts that execute hypercalls or assembly
//! only build for the kernel (`target_os = "linux"` is the same, so they are gated on
//! `not(test)`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod balloon;
pub mod blkfront;
pub mod cmdline;
pub mod console;
pub mod console_ring;
pub mod entry;
pub mod events;
pub mod gnttab;
pub mod heap;
pub mod hypercall;
pub mod mm;
pub mod net;
pub mod netfront;
pub mod rngfront;
pub mod shared;
pub mod split;
pub mod start_info;
pub mod time;
pub mod traps;
pub mod va;
pub mod xenbus;

/// What [`runtime_init`] managed to set up; a kernel (or a test) can check before relying on
/// a part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// The trap table is registered.
    pub traps: bool,
    /// The memory manager runs (possibly limited to the bootstrap region).
    pub mm: bool,
    /// The direct map covers all of the domain's pages.
    pub direct_map: bool,
    /// shared_info is mapped: the PV clock works and events can be delivered.
    pub shared_info: bool,
    /// Event callbacks registered and the timer VIRQ bound.
    pub events: bool,
}

#[cfg(not(test))]
mod kernel {
    use super::*;
    use crate::start_info::StartInfo;
    use spin::Once;

    static STATUS: Once<RuntimeStatus> = Once::new();

    /// What the runtime set up at boot (all false before [`runtime_init`]).
    pub fn status() -> RuntimeStatus {
        STATUS.get().copied().unwrap_or_default()
    }

    extern "C" {
        static __kernel_end: u8;
        /// The page below the boot stack ([`entry::BOOT_STACK_SIZE`]).
        static __pv_stack_guard: u8;
    }

    /// Runtime set-up every kernel gets before its main function runs: trap table, memory
    /// manager, shared_info, event callbacks and the timer VIRQ, then upcalls are unmasked.
    /// Each step that fails is reported on the console and the rest carries on without it.
    pub fn runtime_init(si: &StartInfo, si_va: u64) {
        let mut st = RuntimeStatus::default();
        match traps::init() {
            Ok(()) => st.traps = true,
            Err(e) => println!("pv: set_trap_table failed: {e}"),
        }
        // Only the address of the linker-script symbol is taken, never its contents.
        let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
        match mm::init(si, entry::VIRT_BASE, kernel_end, si_va) {
            Ok(None) => (st.mm, st.direct_map) = (true, true),
            Ok(Some(e)) => {
                st.mm = true;
                println!("pv: direct map limited to the bootstrap region: {e}");
            }
            Err(e) => println!("pv: memory manager not available: {e:?}"),
        }
        if st.mm {
            // Only the address is taken. With the page gone, a stack overflow faults: the
            // hypervisor cannot write the bounce frame there either and crashes the domain
            // with a one-line reason.
            let guard = core::ptr::addr_of!(__pv_stack_guard) as u64;
            if let Err(e) = mm::unmap_page(guard) {
                println!("pv: cannot unmap the stack guard page: {e}");
            }
        }
        match shared::map(si.shared_info) {
            Ok(_) => st.shared_info = true,
            Err(e) => println!("pv: cannot map shared_info ({e}): no events, no PV clock"),
        }
        match events::init() {
            Ok(()) => match time::init() {
                Ok(_) => st.events = true,
                Err(e) => println!("pv: cannot bind VIRQ_TIMER: {e}"),
            },
            Err(e) if st.shared_info => println!("pv: cannot register event callbacks: {e}"),
            Err(_) => {}
        }
        if st.events {
            events::unmask_upcalls();
        }
        STATUS.call_once(|| st);
    }
}

#[cfg(not(test))]
pub use kernel::{runtime_init, status};
