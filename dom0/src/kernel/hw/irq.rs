//! Device interrupts as dom0 receives them: a GSI is mapped to a pirq
//! (`PHYSDEVOP_map_pirq`), the pirq bound to an event channel (`EVTCHNOP_bind_pirq`), and the
//! level-triggered line stays masked by the hypervisor from the moment it fires until dom0
//! sends `PHYSDEVOP_eoi` — after the driver has quietened the device (for virtio, by reading
//! its ISR status), so the line does not fire again at once.
//!
//! The event handler runs in upcall context and only raises a flag; the driver does the
//! acknowledging from its own loop.
//!
//! PCI INTx lines are shared (QEMU's `pc` routes four slots' pins onto two or three GSIs, so
//! a disk and the NIC often share one): a second device binding a GSI already bound joins
//! that line. Each of its devices gets the event and checks (and acknowledges) its own
//! status; each EOIs. An EOI while another device still asserts the line only makes it fire
//! again, which that device's own acknowledgement then ends.

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
/// Devices one line can serve.
pub const MAX_SHARERS: usize = 4;
const NO_PORT: u32 = u32::MAX;

struct Line {
    port: AtomicU32,
    gsi: AtomicU32,
    pirq: AtomicU32,
    needs_eoi: AtomicBool,
    /// Which sharer slots are in use (bit i: sharer i).
    sharers: AtomicU32,
    /// Per sharer: the line fired since it last looked.
    pending: [AtomicBool; MAX_SHARERS],
    count: AtomicU64,
}

static LINES: [Line; MAX_LINES] = [const {
    Line {
        port: AtomicU32::new(NO_PORT),
        gsi: AtomicU32::new(u32::MAX),
        pirq: AtomicU32::new(0),
        needs_eoi: AtomicBool::new(false),
        sharers: AtomicU32::new(0),
        pending: [const { AtomicBool::new(false) }; MAX_SHARERS],
        count: AtomicU64::new(0),
    }
}; MAX_LINES];

/// Serialises binding and unbinding (the handler only reads).
static BINDING: spin::Mutex<()> = spin::Mutex::new(());

fn on_event(port: Port) {
    if let Some(l) = LINES.iter().find(|l| l.port.load(Ordering::Relaxed) == port.0) {
        l.count.fetch_add(1, Ordering::Relaxed);
        let sharers = l.sharers.load(Ordering::SeqCst);
        for (i, p) in l.pending.iter().enumerate() {
            if sharers & (1 << i) != 0 {
                p.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A bound device interrupt (one device's share of its line).
#[derive(Debug)]
pub struct Irq {
    pub gsi: u32,
    pub pirq: u32,
    pub port: Port,
    slot: usize,
    sharer: usize,
    /// The hypervisor wants an EOI after each interrupt.
    needs_eoi: bool,
}

fn physdev_op<T>(cmd: u32, arg: &mut T) -> Result<u64, Errno> {
    hypercall::check(hypercall::call2::<{ nr::PHYSDEV_OP }>(u64::from(cmd), hypercall::ptr_mut(arg)))
}

/// Takes a free sharer slot of line `slot`.
fn join(slot: usize) -> Option<usize> {
    let l = &LINES[slot];
    let used = l.sharers.load(Ordering::SeqCst);
    let i = (0..MAX_SHARERS).find(|i| used & (1 << i) == 0)?;
    l.pending[i].store(false, Ordering::SeqCst);
    l.sharers.fetch_or(1 << i, Ordering::SeqCst);
    Some(i)
}

impl Irq {
    /// Maps `gsi` to a pirq and binds it to an event channel with a handler, or joins the
    /// line if another device bound it already.
    pub fn bind(gsi: u32) -> Result<Irq, Errno> {
        let _g = BINDING.lock();
        if let Some(slot) = LINES
            .iter()
            .position(|l| l.port.load(Ordering::SeqCst) != NO_PORT && l.gsi.load(Ordering::SeqCst) == gsi)
        {
            let l = &LINES[slot];
            let sharer = join(slot).ok_or(Errno::EBUSY)?;
            return Ok(Irq {
                gsi,
                pirq: l.pirq.load(Ordering::SeqCst),
                port: Port(l.port.load(Ordering::SeqCst)),
                slot,
                sharer,
                needs_eoi: l.needs_eoi.load(Ordering::SeqCst),
            });
        }
        let slot =
            LINES.iter().position(|l| l.port.load(Ordering::SeqCst) == NO_PORT).ok_or(Errno::ENOSPC)?;
        let mut m = PhysdevMapPirq {
            domid: DomId::SELF,
            type_: map_pirq_type::GSI,
            index: gsi as i32,
            pirq: -1,
            ..Default::default()
        };
        physdev_op(physop::MAP_PIRQ, &mut m)?;
        let pirq = m.pirq as u32;
        let mut b = EvtchnBindPirq { pirq, flags: 0, port: Port(0) };
        hypercall::check(hypercall::event_channel_op(evtop::BIND_PIRQ, &mut b))?;
        let mut q = PhysdevIrqStatusQuery { irq: pirq, flags: 0 };
        let needs_eoi =
            physdev_op(physop::IRQ_STATUS_QUERY, &mut q).is_ok() && q.flags & xenirqstat::NEEDS_EOI != 0;
        let l = &LINES[slot];
        l.gsi.store(gsi, Ordering::SeqCst);
        l.pirq.store(pirq, Ordering::SeqCst);
        l.needs_eoi.store(needs_eoi, Ordering::SeqCst);
        l.sharers.store(0, Ordering::SeqCst);
        let sharer = join(slot).ok_or(Errno::EBUSY)?;
        l.port.store(b.port.0, Ordering::SeqCst);
        if let Err(e) = events::attach(b.port, on_event) {
            let _ = events::close(b.port);
            l.sharers.store(0, Ordering::SeqCst);
            l.port.store(NO_PORT, Ordering::SeqCst);
            return Err(e);
        }
        Ok(Irq { gsi, pirq, port: b.port, slot, sharer, needs_eoi })
    }

    fn flag(&self) -> &AtomicBool {
        &LINES[self.slot].pending[self.sharer]
    }

    /// True if the line fired since the last [`take`](Self::take).
    pub fn pending(&self) -> bool {
        self.flag().load(Ordering::SeqCst)
    }

    /// Consumes the pending flag.
    pub fn take(&self) -> bool {
        self.flag().swap(false, Ordering::SeqCst)
    }

    /// Interrupts received so far on the line (all its devices').
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
        let _g = BINDING.lock();
        let l = &LINES[self.slot];
        let left = l.sharers.fetch_and(!(1 << self.sharer), Ordering::SeqCst) & !(1 << self.sharer);
        if left != 0 {
            return;
        }
        let _ = events::close(self.port);
        let mut u = hypercall_abi::physdev::PhysdevUnmapPirq {
            domid: DomId::SELF,
            pirq: self.pirq as i32,
            ..Default::default()
        };
        let _ = physdev_op(physop::UNMAP_PIRQ, &mut u);
        l.gsi.store(u32::MAX, Ordering::SeqCst);
        l.port.store(NO_PORT, Ordering::SeqCst);
    }
}
