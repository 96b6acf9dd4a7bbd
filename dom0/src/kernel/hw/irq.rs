//! Device interrupts as dom0 receives them: a GSI is mapped to a pirq
//! (`PHYSDEVOP_map_pirq`), the pirq bound to an event channel (`EVTCHNOP_bind_pirq`), and the
//! level-triggered line stays masked by the hypervisor from the moment it fires until dom0
//! sends `PHYSDEVOP_eoi` — after the driver has quietened the device (for virtio, by reading
//! its ISR status), so the line does not fire again at once.
//!
//! The event handler runs in upcall context and only raises a flag; the driver does the
//! acknowledging from its own loop.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hypercall_abi::event_channel::{op as evtop, EvtchnBindPirq};
use hypercall_abi::hypercall::nr;
use hypercall_abi::physdev::{
    map_pirq_type, op as physop, xenirqstat, PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq,
};
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::{events, hypercall};

/// Interrupt lines dom0 can have bound at once.
pub const MAX_LINES: usize = 8;
const NO_PORT: u32 = u32::MAX;

struct Line {
    port: AtomicU32,
    pending: AtomicBool,
    count: AtomicU64,
}

static LINES: [Line; MAX_LINES] = [const {
    Line { port: AtomicU32::new(NO_PORT), pending: AtomicBool::new(false), count: AtomicU64::new(0) }
}; MAX_LINES];

fn on_event(port: Port) {
    if let Some(l) = LINES.iter().find(|l| l.port.load(Ordering::Relaxed) == port.0) {
        l.count.fetch_add(1, Ordering::Relaxed);
        l.pending.store(true, Ordering::SeqCst);
    }
}

/// A bound device interrupt.
#[derive(Debug)]
pub struct Irq {
    pub gsi: u32,
    pub pirq: u32,
    pub port: Port,
    slot: usize,
    /// The hypervisor wants an EOI after each interrupt.
    needs_eoi: bool,
}

fn physdev_op<T>(cmd: u32, arg: &mut T) -> Result<u64, Errno> {
    hypercall::check(hypercall::call2::<{ nr::PHYSDEV_OP }>(u64::from(cmd), hypercall::ptr_mut(arg)))
}

impl Irq {
    /// Maps `gsi` to a pirq and binds it to an event channel with a handler.
    pub fn bind(gsi: u32) -> Result<Irq, Errno> {
        let slot = LINES
            .iter()
            .position(|l| {
                l.port.compare_exchange(NO_PORT, NO_PORT - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            })
            .ok_or(Errno::ENOSPC)?;
        let release = |e| {
            LINES[slot].port.store(NO_PORT, Ordering::SeqCst);
            Err(e)
        };
        let mut m = PhysdevMapPirq {
            domid: DomId::SELF,
            type_: map_pirq_type::GSI,
            index: gsi as i32,
            pirq: -1,
            ..Default::default()
        };
        if let Err(e) = physdev_op(physop::MAP_PIRQ, &mut m) {
            return release(e);
        }
        let pirq = m.pirq as u32;
        let mut b = EvtchnBindPirq { pirq, flags: 0, port: Port(0) };
        if let Err(e) = hypercall::check(hypercall::event_channel_op(evtop::BIND_PIRQ, &mut b)) {
            return release(e);
        }
        let mut q = PhysdevIrqStatusQuery { irq: pirq, flags: 0 };
        let needs_eoi =
            physdev_op(physop::IRQ_STATUS_QUERY, &mut q).is_ok() && q.flags & xenirqstat::NEEDS_EOI != 0;
        LINES[slot].pending.store(false, Ordering::SeqCst);
        LINES[slot].port.store(b.port.0, Ordering::SeqCst);
        if let Err(e) = events::attach(b.port, on_event) {
            let _ = events::close(b.port);
            return release(e);
        }
        Ok(Irq { gsi, pirq, port: b.port, slot, needs_eoi })
    }

    /// True if the line fired since the last [`take`](Self::take).
    pub fn pending(&self) -> bool {
        LINES[self.slot].pending.load(Ordering::SeqCst)
    }

    /// Consumes the pending flag.
    pub fn take(&self) -> bool {
        LINES[self.slot].pending.swap(false, Ordering::SeqCst)
    }

    /// Interrupts received so far.
    #[cfg(feature = "test-aids")]
    pub fn count(&self) -> u64 {
        LINES[self.slot].count.load(Ordering::Relaxed)
    }

    /// Lets the line fire again (after the device was acknowledged).
    pub fn eoi(&self) {
        if self.needs_eoi {
            let mut e = PhysdevEoi { irq: self.pirq };
            let _ = physdev_op(physop::EOI, &mut e);
        }
    }
}

impl Drop for Irq {
    fn drop(&mut self) {
        let _ = events::close(self.port);
        let mut u = hypercall_abi::physdev::PhysdevUnmapPirq {
            domid: DomId::SELF,
            pirq: self.pirq as i32,
            ..Default::default()
        };
        let _ = physdev_op(physop::UNMAP_PIRQ, &mut u);
        LINES[self.slot].port.store(NO_PORT, Ordering::SeqCst);
    }
}
