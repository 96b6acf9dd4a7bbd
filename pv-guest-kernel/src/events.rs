//! Event channels, guest side (2-level ABI): the upcall that scans the pending bitmaps, a
//! port → handler table, the `event_channel_op` calls, per-port masking, the vCPU-wide upcall
//! mask ("interrupt flag") with a scoped guard, and blocking until a condition holds.
//!
//! Delivery: the hypervisor bounces to our event callback with the upcall mask set; the
//! handler clears `evtchn_upcall_pending`, exchanges `evtchn_pending_sel` with 0, and for each
//! selected word handles `pending & ~mask` bit by bit, clearing each pending bit atomically
//! before calling the port's handler (mini-os `do_hypervisor_callback`). The `iret` hypercall
//! then restores the interrupted mask, and the hypervisor re-delivers if more arrived.
//!
//! Handlers run in upcall context: they must not allocate (the heap lock may be held by the
//! interrupted code) and must not block. Code that changes the handler table masks upcalls
//! while it holds the table lock, so the upcall can never spin on it.

use crate::shared::{SharedInfoPage, EVTCHN_WORDS};
use core::sync::atomic::Ordering;
use hypercall_abi::Port;

/// Ports of the 2-level ABI.
pub const NR_PORTS: usize = EVTCHN_WORDS * 64;

/// What runs when a port fires.
pub type EventHandler = fn(Port);

/// The 2-level scan for vCPU `vcpu`: takes `evtchn_pending_sel`, then every pending and
/// unmasked port of the selected words in ascending order, clearing its pending bit before
/// calling `f`. Returns the number of ports handled.
pub fn scan(si: &SharedInfoPage, vcpu: usize, mut f: impl FnMut(Port)) -> usize {
    let Some(vi) = si.vcpu_info.get(vcpu) else { return 0 };
    let mut sel = vi.evtchn_pending_sel.swap(0, Ordering::SeqCst);
    let mut handled = 0;
    while sel != 0 {
        let w = sel.trailing_zeros() as usize;
        sel &= sel - 1;
        if w >= EVTCHN_WORDS {
            continue;
        }
        loop {
            let active =
                si.evtchn_pending[w].load(Ordering::SeqCst) & !si.evtchn_mask[w].load(Ordering::SeqCst);
            if active == 0 {
                break;
            }
            let bit = active.trailing_zeros();
            si.evtchn_pending[w].fetch_and(!(1u64 << bit), Ordering::SeqCst);
            handled += 1;
            f(Port((w * 64) as u32 + bit));
        }
    }
    handled
}

#[cfg(not(test))]
mod kernel {
    use super::*;
    use crate::hypercall::{self, check};
    use crate::shared::{self, SharedInfoPage};
    use crate::traps::TrapFrame;
    use core::sync::atomic::{AtomicBool, AtomicU64};
    use hypercall_abi::event_channel::{
        op, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnSend, EvtchnUnmask,
    };
    use hypercall_abi::{DomId, Errno};
    use spin::Mutex;

    static HANDLERS: Mutex<[Option<EventHandler>; NR_PORTS]> = Mutex::new([None; NR_PORTS]);
    /// Callbacks registered and shared_info mapped: events can be delivered.
    static READY: AtomicBool = AtomicBool::new(false);
    static UPCALLS: AtomicU64 = AtomicU64::new(0);
    static DELIVERED: AtomicU64 = AtomicU64::new(0);
    static STRAY: AtomicU64 = AtomicU64::new(0);

    /// The event callback's Rust half (called by the entry stub in `traps`).
    pub(crate) extern "C" fn upcall(_frame: &mut TrapFrame) {
        UPCALLS.fetch_add(1, Ordering::Relaxed);
        let Some(si) = shared::get() else { return };
        si.vcpu_info[0].evtchn_upcall_pending.store(0, Ordering::SeqCst);
        scan(si, 0, |port| {
            DELIVERED.fetch_add(1, Ordering::Relaxed);
            // Upcalls are masked here, so the main code cannot be holding the lock.
            let h = HANDLERS.lock().get(port.0 as usize).copied().flatten();
            match h {
                Some(h) => h(port),
                None => {
                    STRAY.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// Registers the event and failsafe callbacks and, when shared_info is mapped, masks every
    /// port (they are unmasked as handlers are bound). Upcalls stay masked until
    /// [`unmask_upcalls`].
    pub fn init() -> Result<(), Errno> {
        let (event, failsafe) = crate::traps::callback_entries();
        check(hypercall::set_callbacks(event, failsafe, 0))?;
        let si = shared::get().ok_or(Errno::ENODEV)?;
        for w in si.evtchn_mask.iter() {
            w.store(!0, Ordering::SeqCst);
        }
        READY.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// True once events can be delivered.
    pub fn available() -> bool {
        READY.load(Ordering::SeqCst)
    }

    /// Upcalls taken, ports handled, and ports that fired with no handler.
    pub fn counters() -> (u64, u64, u64) {
        (UPCALLS.load(Ordering::Relaxed), DELIVERED.load(Ordering::Relaxed), STRAY.load(Ordering::Relaxed))
    }

    fn page() -> Result<&'static SharedInfoPage, Errno> {
        shared::get().ok_or(Errno::ENODEV)
    }

    /// Masks upcalls until the guard drops, which restores the previous state.
    #[must_use = "upcalls are unmasked again when the guard drops"]
    pub struct UpcallGuard {
        prev: Option<u8>,
    }

    /// Masks upcalls (the PV "cli"); returns a guard restoring the previous mask.
    pub fn mask_upcalls() -> UpcallGuard {
        let prev = shared::vcpu0().map(|v| v.evtchn_upcall_mask.swap(1, Ordering::SeqCst));
        UpcallGuard { prev }
    }

    impl Drop for UpcallGuard {
        fn drop(&mut self) {
            if self.prev == Some(0) {
                unmask_upcalls();
            }
        }
    }

    /// Unmasks upcalls (the PV "sti"); anything already pending is delivered at once.
    pub fn unmask_upcalls() {
        let Some(v) = shared::vcpu0() else { return };
        v.evtchn_upcall_mask.store(0, Ordering::SeqCst);
        if v.evtchn_upcall_pending.load(Ordering::SeqCst) != 0 {
            force_upcall();
        }
    }

    /// True if upcalls are masked (or cannot happen at all).
    pub fn upcalls_masked() -> bool {
        shared::vcpu0().is_none_or(|v| v.evtchn_upcall_mask.load(Ordering::SeqCst) != 0)
    }

    /// Any hypercall: the hypervisor checks for deliverable events on its way back.
    fn force_upcall() {
        hypercall::xen_version(hypercall_abi::version::op::VERSION, 0);
    }

    /// Installs (or with `None` removes) the handler of `port`; returns the previous one.
    pub fn set_handler(port: Port, h: Option<EventHandler>) -> Result<Option<EventHandler>, Errno> {
        let _g = mask_upcalls();
        let mut t = HANDLERS.lock();
        let slot = t.get_mut(port.0 as usize).ok_or(Errno::EINVAL)?;
        Ok(core::mem::replace(slot, h))
    }

    /// Masks `port`.
    pub fn mask(port: Port) -> Result<(), Errno> {
        let (w, b) = SharedInfoPage::port_bit(port.0);
        if port.0 as usize >= NR_PORTS {
            return Err(Errno::EINVAL);
        }
        page()?.evtchn_mask[w].fetch_or(b, Ordering::SeqCst);
        Ok(())
    }

    /// Unmasks `port`. If it became pending while masked, the hypervisor must raise the
    /// upcall; it only does so when it sees the mask go from set to clear, so the bit is set
    /// again and `EVTCHNOP_unmask` clears it (Linux's `unmask_evtchn`).
    pub fn unmask(port: Port) -> Result<(), Errno> {
        if port.0 as usize >= NR_PORTS {
            return Err(Errno::EINVAL);
        }
        let si = page()?;
        let (w, b) = SharedInfoPage::port_bit(port.0);
        si.evtchn_mask[w].fetch_and(!b, Ordering::SeqCst);
        if si.evtchn_pending[w].load(Ordering::SeqCst) & b != 0 {
            si.evtchn_mask[w].fetch_or(b, Ordering::SeqCst);
            let mut u = EvtchnUnmask { port };
            check(hypercall::event_channel_op(op::UNMASK, &mut u))?;
        }
        Ok(())
    }

    /// `EVTCHNOP_bind_virq` on vCPU 0.
    pub fn bind_virq(virq: u32) -> Result<Port, Errno> {
        let mut b = EvtchnBindVirq { virq, vcpu: 0, port: Port(0) };
        check(hypercall::event_channel_op(op::BIND_VIRQ, &mut b))?;
        Ok(b.port)
    }

    /// `EVTCHNOP_alloc_unbound`: a port of ours that `remote` may bind to.
    pub fn alloc_unbound(remote: DomId) -> Result<Port, Errno> {
        let mut a = EvtchnAllocUnbound { dom: DomId::SELF, remote_dom: remote, port: Port(0) };
        check(hypercall::event_channel_op(op::ALLOC_UNBOUND, &mut a))?;
        Ok(a.port)
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new local port to `remote:remote_port`.
    pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        let mut b = EvtchnBindInterdomain { remote_dom: remote, _pad: 0, remote_port, local_port: Port(0) };
        check(hypercall::event_channel_op(op::BIND_INTERDOMAIN, &mut b))?;
        Ok(b.local_port)
    }

    /// `EVTCHNOP_send`: notifies the other end of `port`.
    pub fn send(port: Port) -> Result<(), Errno> {
        let mut s = EvtchnSend { port };
        check(hypercall::event_channel_op(op::SEND, &mut s)).map(|_| ())
    }

    /// Masks `port`, drops its handler and closes it.
    pub fn close(port: Port) -> Result<(), Errno> {
        let _ = mask(port);
        let _ = set_handler(port, None);
        let mut c = EvtchnClose { port };
        check(hypercall::event_channel_op(op::CLOSE, &mut c)).map(|_| ())
    }

    /// Installs `h` on `port` and unmasks it.
    pub fn attach(port: Port, h: EventHandler) -> Result<(), Errno> {
        set_handler(port, Some(h))?;
        unmask(port)
    }

    /// Binds `virq` with handler `h`, unmasked.
    pub fn bind_virq_handler(virq: u32, h: EventHandler) -> Result<Port, Errno> {
        let port = bind_virq(virq)?;
        attach(port, h)?;
        Ok(port)
    }

    /// Blocks (`SCHEDOP_block`) until `cond()` holds, or until system time `deadline` if given
    /// (which needs the timer VIRQ bound by `time::init`). Returns whether `cond()` held.
    ///
    /// `cond` is evaluated with upcalls masked, so a wake-up between the check and the block
    /// is never lost: `SCHEDOP_block` unmasks and checks for pending events atomically, and
    /// the events run (and may make `cond` true) on the way back.
    pub fn block_until(mut cond: impl FnMut() -> bool, deadline: Option<u64>) -> Result<bool, Errno> {
        let v = shared::vcpu0().ok_or(Errno::ENODEV)?;
        if !available() || (deadline.is_some() && crate::time::timer_port().is_none()) {
            return Err(Errno::ENODEV);
        }
        let _g = mask_upcalls();
        loop {
            if cond() {
                return Ok(true);
            }
            if let Some(d) = deadline {
                if crate::time::now_ns() >= d {
                    return Ok(false);
                }
                check(hypercall::arm_timer(d))?;
            }
            hypercall::block();
            v.evtchn_upcall_mask.store(1, Ordering::SeqCst);
        }
    }
}

#[cfg(not(test))]
pub use kernel::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn page_with(pending: &[u32], masked: &[u32], sel_all: bool) -> Box<SharedInfoPage> {
        let p = Box::new(SharedInfoPage::zeroed());
        for &port in pending {
            let (w, b) = SharedInfoPage::port_bit(port);
            p.evtchn_pending[w].fetch_or(b, Ordering::SeqCst);
            if sel_all {
                p.vcpu_info[0].evtchn_pending_sel.fetch_or(1 << w, Ordering::SeqCst);
            }
        }
        for &port in masked {
            let (w, b) = SharedInfoPage::port_bit(port);
            p.evtchn_mask[w].fetch_or(b, Ordering::SeqCst);
        }
        p
    }

    #[test]
    fn scans_in_order_and_clears() {
        let p = page_with(&[3, 64, 65, 4095, 200], &[65], true);
        let mut got = Vec::new();
        assert_eq!(scan(&p, 0, |port| got.push(port.0)), 4);
        assert_eq!(got, vec![3, 64, 200, 4095]);
        // Handled bits are cleared, the masked one stays pending, the selector is consumed.
        assert!(!p.is_pending(3) && !p.is_pending(4095) && p.is_pending(65));
        assert_eq!(p.vcpu_info[0].evtchn_pending_sel.load(Ordering::SeqCst), 0);
        assert_eq!(scan(&p, 0, |_| panic!("nothing selected")), 0);
    }

    #[test]
    fn unselected_words_wait_for_their_selector() {
        let p = page_with(&[10], &[], false);
        assert_eq!(scan(&p, 0, |_| ()), 0);
        assert!(p.is_pending(10));
        p.vcpu_info[0].evtchn_pending_sel.store(1, Ordering::SeqCst);
        assert_eq!(scan(&p, 0, |_| ()), 1);
        assert_eq!(scan(&p, 99, |_| ()), 0);
    }

    #[test]
    fn a_handler_raising_a_port_in_the_same_word_is_seen() {
        let p = page_with(&[1], &[], true);
        let mut got = Vec::new();
        scan(&p, 0, |port| {
            got.push(port.0);
            if port.0 == 1 {
                // As a loopback send from a handler would.
                p.evtchn_pending[0].fetch_or(1 << 5, Ordering::SeqCst);
            }
        });
        assert_eq!(got, vec![1, 5]);
    }

    proptest! {
        #[test]
        fn handles_exactly_pending_and_unmasked(
            pending in proptest::collection::btree_set(0u32..4096, 0..64),
            masked in proptest::collection::btree_set(0u32..4096, 0..64),
        ) {
            let pv: Vec<u32> = pending.iter().copied().collect();
            let mv: Vec<u32> = masked.iter().copied().collect();
            let p = page_with(&pv, &mv, true);
            let mut got = Vec::new();
            scan(&p, 0, |port| got.push(port.0));
            let want: Vec<u32> = pending.difference(&masked).copied().collect();
            prop_assert_eq!(&got, &want);
            let still: BTreeSet<u32> = (0..4096).filter(|&q| p.is_pending(q)).collect();
            let want_still: BTreeSet<u32> = pending.intersection(&masked).copied().collect();
            prop_assert_eq!(still, want_still);
        }
    }
}
