//! Event channels, 2-level ABI, as Xen's `event_channel.c`: each domain's port table, the
//! pending/mask bitmaps in its shared_info page through which events reach the guest, the
//! delivery every other part of the hypervisor uses to notify a domain (interdomain sends,
//! VIRQs, pirqs), and one function per `EVTCHNOP_*` owning the channel's whole lifecycle.
//! `hypercall/evtchn.rs` only decodes, copies and calls these.
//!
//! The port table is plain hypervisor data. The bitmaps live in guest-shared memory and are
//! only touched with atomic read-modify-write operations through [`MachineMemory`], because
//! the guest changes them concurrently (on real SMP) and must never be able to make the
//! hypervisor act on a value it read twice.

use crate::hv::Hypervisor;
use crate::irq::IrqOp;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::sched::VcpuRef;
use alloc::vec::Vec;
use hypercall_abi::event_channel::fifo;
use hypercall_abi::microvisor::trace::Record;
use hypercall_abi::xen::{virq, ArchVcpuInfo, SharedInfo, VcpuInfo};
use hypercall_abi::{DomId, Errno, Mfn, Port};

/// What a port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not in use.
    Free,
    /// Allocated, waiting for `remote` to bind to it.
    Unbound { remote: DomId },
    /// Connected to `remote_port` of `remote`.
    Interdomain { remote: DomId, remote_port: Port },
    /// Bound to a virtual IRQ.
    Virq(u32),
    /// Bound for inter-vCPU notifications.
    Ipi,
    /// Bound to a physical IRQ (dom0 driver domain).
    Pirq(u32),
}

/// One port.
#[derive(Clone, Copy, Debug)]
pub struct Channel {
    pub state: PortState,
    /// vCPU notified when the port becomes pending.
    pub notify_vcpu: u32,
}

/// A domain's ports. Port 0 is never allocated (Xen reserves it).
pub struct EventChannels {
    ports: Vec<Channel>,
    /// Highest number of ports this domain may have.
    limit: u32,
    /// Port bound to each VIRQ, per vCPU.
    virqs: Vec<[Option<Port>; virq::NR_VIRQS as usize]>,
}

/// Ports of the 2-level ABI for a 64-bit guest.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

const FREE: Channel = Channel { state: PortState::Free, notify_vcpu: 0 };

impl EventChannels {
    /// A table for a domain with `vcpus` vCPUs and at most `limit` ports (≤ 4096). Room for
    /// every port is allocated now, so allocating a port later never allocates memory.
    pub fn new(vcpus: u32, limit: u32) -> EventChannels {
        let limit = limit.min(EVTCHN_2L_NR_CHANNELS);
        let mut ports = Vec::with_capacity(limit.max(1) as usize);
        ports.push(FREE);
        EventChannels { ports, limit, virqs: alloc::vec![[None; virq::NR_VIRQS as usize]; vcpus as usize] }
    }

    /// Heap a table for `vcpus` vCPUs and `limit` ports takes.
    pub fn commitment(vcpus: usize, limit: u32) -> usize {
        limit.clamp(1, EVTCHN_2L_NR_CHANNELS) as usize * core::mem::size_of::<Channel>()
            + vcpus * core::mem::size_of::<[Option<Port>; virq::NR_VIRQS as usize]>()
    }

    /// The channel at `port`, if the port number is valid and allocated.
    #[inline]
    pub fn get(&self, port: Port) -> Result<&Channel, Errno> {
        match self.ports.get(port.0 as usize) {
            Some(c) if c.state != PortState::Free => Ok(c),
            _ => Err(Errno::EINVAL),
        }
    }

    /// State of `port` (`Free` for unallocated or out-of-range ports within the limit).
    pub fn state(&self, port: Port) -> Result<PortState, Errno> {
        if port.0 >= self.limit {
            return Err(Errno::EINVAL);
        }
        Ok(self.ports.get(port.0 as usize).map_or(PortState::Free, |c| c.state))
    }

    /// Allocates the lowest free port with `state`.
    pub fn alloc(&mut self, state: PortState, notify_vcpu: u32) -> Result<Port, Errno> {
        let idx = match self.ports.iter().skip(1).position(|c| c.state == PortState::Free) {
            Some(i) => i + 1,
            None => {
                if self.ports.len() as u32 >= self.limit {
                    return Err(Errno::ENOSPC);
                }
                // Within the capacity reserved for `limit` ports: never allocates.
                self.ports.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                self.ports.push(FREE);
                self.ports.len() - 1
            }
        };
        self.ports[idx] = Channel { state, notify_vcpu };
        if let PortState::Virq(v) = state {
            self.virqs[notify_vcpu as usize][v as usize] = Some(Port(idx as u32));
        }
        Ok(Port(idx as u32))
    }

    /// Sets the state of an allocated port.
    pub fn set_state(&mut self, port: Port, state: PortState) -> Result<(), Errno> {
        match self.ports.get_mut(port.0 as usize) {
            Some(c) if c.state != PortState::Free => {
                c.state = state;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Frees `port`, returning what it was bound to.
    pub fn free(&mut self, port: Port) -> Result<Channel, Errno> {
        let c = *self.get(port)?;
        if let PortState::Virq(v) = c.state {
            if let Some(slot) = self.virqs.get_mut(c.notify_vcpu as usize) {
                slot[v as usize] = None;
            }
        }
        self.ports[port.0 as usize] = FREE;
        Ok(c)
    }

    /// Moves notifications of `port` to `vcpu`.
    pub fn bind_vcpu(&mut self, port: Port, vcpu: u32) -> Result<(), Errno> {
        if vcpu as usize >= self.virqs.len() {
            return Err(Errno::ENOENT);
        }
        let c = *self.get(port)?;
        match c.state {
            // Per-vCPU VIRQs and IPIs stay where they were bound.
            PortState::Virq(v) if !is_global_virq(v) => Err(Errno::EINVAL),
            PortState::Ipi => Err(Errno::EINVAL),
            _ => {
                if let PortState::Virq(v) = c.state {
                    self.virqs[c.notify_vcpu as usize][v as usize] = None;
                    self.virqs[vcpu as usize][v as usize] = Some(port);
                }
                self.ports[port.0 as usize].notify_vcpu = vcpu;
                Ok(())
            }
        }
    }

    /// The port bound to `v` on `vcpu`.
    pub fn virq_port(&self, vcpu: u32, v: u32) -> Option<Port> {
        self.virqs.get(vcpu as usize)?.get(v as usize).copied().flatten()
    }

    /// Every allocated port with its channel.
    pub fn iter(&self) -> impl Iterator<Item = (Port, Channel)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state != PortState::Free)
            .map(|(i, c)| (Port(i as u32), *c))
    }

    /// Port limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Number of vCPUs the table was made for.
    pub fn nr_vcpus(&self) -> u32 {
        self.virqs.len() as u32
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// Marks `port` of `domid` pending and wakes the vCPU it notifies (Xen's `evtchn_set_pending`).
pub fn set_pending<P: Platform>(hv: &mut Hypervisor<P>, domid: DomId, port: Port) {
    raise(hv, domid, port, false);
}

/// [`set_pending`], doing nothing if `domid` is not running (`live_only`; an interdomain send
/// to a dying peer), with one lookup of the domain for both.
#[inline(always)]
fn raise<P: Platform>(hv: &mut Hypervisor<P>, domid: DomId, port: Port, live_only: bool) {
    let Some(d) = hv.domains.get(&domid) else { return };
    if live_only && !d.is_alive() {
        return;
    }
    let Ok(ch) = d.evtchn.get(port) else { return };
    let vcpu = ch.notify_vcpu;
    if hv.trace.is_on() {
        record_send(&mut hv.trace, hv.plat.tsc(), domid, port);
    }
    let Some(vi) = d.vcpu(vcpu).map(|v| v.info()) else { return };
    if d.bitmaps().set_pending(hv.plat.mem(), vi, port) {
        hv.kick_vcpu(VcpuRef { domid, vcpu });
    }
}

/// Out of line: the trace's encoder would cost every send a larger frame.
#[cold]
#[inline(never)]
fn record_send(trace: &mut crate::trace::Tracer, tsc: u64, domid: DomId, port: Port) {
    trace.record(&Record::EventSend { tsc, dom: domid.0, port: port.0 });
}

/// Raises per-vCPU VIRQ `v` on `r`, if the guest bound it.
pub fn send_vcpu_virq<P: Platform>(hv: &mut Hypervisor<P>, r: VcpuRef, v: u32) {
    let port = hv.domains.get(&r.domid).and_then(|d| d.evtchn.virq_port(r.vcpu, v));
    if let Some(p) = port {
        set_pending(hv, r.domid, p);
    }
}

/// Raises global VIRQ `v` in `domid`, if bound.
pub fn send_global_virq<P: Platform>(hv: &mut Hypervisor<P>, domid: DomId, v: u32) {
    let port =
        hv.domains.get(&domid).and_then(|d| (0..d.evtchn.nr_vcpus()).find_map(|c| d.evtchn.virq_port(c, v)));
    if let Some(p) = port {
        set_pending(hv, domid, p);
    }
}

// ---------------------------------------------------------------------------------------------
// EVTCHNOP_* (the caller is the running domain)

/// `EVTCHNOP_alloc_unbound`: a port of `dom` (the caller's, or any for a privileged caller)
/// that `remote` may bind.
pub fn alloc_unbound<P: Platform>(hv: &mut Hypervisor<P>, dom: DomId, remote: DomId) -> Result<Port, Errno> {
    if dom != hv.current().domid && !hv.cur_dom().privileged {
        return Err(Errno::EPERM);
    }
    let d = hv.domains.get_mut(&dom).ok_or(Errno::ESRCH)?;
    d.evtchn.alloc(PortState::Unbound { remote }, 0)
}

/// `EVTCHNOP_bind_interdomain`: connects a new local port to `remote_port` of `remote`, which
/// must be unbound and offered to the caller. The new port starts pending, as in Xen, so the
/// binder notices anything it missed.
pub fn bind_interdomain<P: Platform>(
    hv: &mut Hypervisor<P>,
    remote: DomId,
    remote_port: Port,
) -> Result<Port, Errno> {
    let me = hv.current().domid;
    let rd = hv.domains.get(&remote).ok_or(Errno::ESRCH)?;
    match rd.evtchn.state(remote_port)? {
        PortState::Unbound { remote: allowed } if allowed == me || allowed == DomId::ANY => {}
        _ => return Err(Errno::EINVAL),
    }
    let local = hv.cur_dom_mut().evtchn.alloc(PortState::Interdomain { remote, remote_port }, 0)?;
    let rd = hv.domains.get_mut(&remote).expect("checked above");
    rd.evtchn
        .set_state(remote_port, PortState::Interdomain { remote: me, remote_port: local })
        .expect("port checked unbound above");
    set_pending(hv, me, local);
    Ok(local)
}

/// `EVTCHNOP_bind_virq`: binds VIRQ `v` of vCPU `vcpu` (global VIRQs only on vCPU 0).
pub fn bind_virq<P: Platform>(hv: &mut Hypervisor<P>, v: u32, vcpu: u32) -> Result<Port, Errno> {
    if v >= virq::NR_VIRQS {
        return Err(Errno::EINVAL);
    }
    if is_global_virq(v) && vcpu != 0 {
        return Err(Errno::EINVAL);
    }
    let d = hv.cur_dom_mut();
    if d.vcpu(vcpu).is_none() {
        return Err(Errno::ENOENT);
    }
    let taken = if is_global_virq(v) {
        (0..d.evtchn.nr_vcpus()).any(|c| d.evtchn.virq_port(c, v).is_some())
    } else {
        d.evtchn.virq_port(vcpu, v).is_some()
    };
    if taken {
        return Err(Errno::EEXIST);
    }
    d.evtchn.alloc(PortState::Virq(v), vcpu)
}

/// `EVTCHNOP_bind_ipi`: a port whose sends notify vCPU `vcpu` of the caller's domain.
pub fn bind_ipi<P: Platform>(hv: &mut Hypervisor<P>, vcpu: u32) -> Result<Port, Errno> {
    let d = hv.cur_dom_mut();
    if d.vcpu(vcpu).is_none() {
        return Err(Errno::ENOENT);
    }
    d.evtchn.alloc(PortState::Ipi, vcpu)
}

/// `EVTCHNOP_bind_pirq`: a port for pirq `pirq`, which the caller mapped; the IOAPIC pin is
/// routed and unmasked on the way out.
pub fn bind_pirq<P: Platform>(hv: &mut Hypervisor<P>, pirq: u32) -> Result<Port, Errno> {
    let me = hv.current().domid;
    match hv.pirqs.get(&pirq) {
        Some(p) if p.owner == me && p.port.is_none() => {}
        Some(p) if p.owner == me => return Err(Errno::EBUSY),
        _ => return Err(Errno::EINVAL),
    }
    let port = hv.cur_dom_mut().evtchn.alloc(PortState::Pirq(pirq), 0)?;
    if let Some(p) = hv.pirqs.get_mut(&pirq) {
        p.port = Some(port);
        p.in_service = false;
    }
    hv.queue_irq_op(IrqOp::Route(pirq));
    hv.queue_irq_op(IrqOp::Unmask(pirq));
    Ok(port)
}

/// `EVTCHNOP_close` (also used when a domain is destroyed): frees `port` of `domid`; the peer
/// of an interdomain channel goes back to unbound, a pirq's pin is masked.
pub fn close<P: Platform>(hv: &mut Hypervisor<P>, domid: DomId, port: Port) -> Result<(), Errno> {
    let d = hv.domains.get_mut(&domid).ok_or(Errno::ESRCH)?;
    let ch = d.evtchn.free(port)?;
    let bm = d.bitmaps();
    if let PortState::Virq(virq::TIMER) = ch.state {
        if let Some(v) = d.vcpu_mut(ch.notify_vcpu) {
            v.virq_timer_port = None;
        }
    }
    bm.clear_pending(hv.plat.mem(), port);
    match ch.state {
        PortState::Pirq(pirq) => {
            if let Some(p) = hv.pirqs.get_mut(&pirq) {
                p.port = None;
                p.in_service = false;
            }
            hv.queue_irq_op(IrqOp::Mask(pirq));
        }
        PortState::Interdomain { remote, remote_port } => {
            if let Some(rd) = hv.domains.get_mut(&remote) {
                let _ = rd.evtchn.set_state(remote_port, PortState::Unbound { remote: domid });
            }
        }
        _ => {}
    }
    Ok(())
}

/// `EVTCHNOP_send` on the caller's `port`.
pub fn send<P: Platform>(hv: &mut Hypervisor<P>, port: Port) -> Result<(), Errno> {
    let me = hv.current().domid;
    let ch = *hv.cur_dom().evtchn.get(port)?;
    match ch.state {
        PortState::Interdomain { remote, remote_port } => {
            raise(hv, remote, remote_port, true);
            Ok(())
        }
        PortState::Ipi => {
            set_pending(hv, me, port);
            Ok(())
        }
        // Xen silently drops a send on a port nobody has bound yet.
        PortState::Unbound { .. } => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

/// `EVTCHNOP_status`: what `port` of `dom` (the caller's, or any for a privileged caller) is
/// bound to, and the vCPU it notifies.
pub fn status<P: Platform>(hv: &Hypervisor<P>, dom: DomId, port: Port) -> Result<(PortState, u32), Errno> {
    if dom != hv.current().domid && !hv.cur_dom().privileged {
        return Err(Errno::EPERM);
    }
    let d = hv.domains.get(&dom).ok_or(Errno::ESRCH)?;
    let state = d.evtchn.state(port)?;
    Ok((state, d.evtchn.get(port).map_or(0, |c| c.notify_vcpu)))
}

/// `EVTCHNOP_unmask`: unmasks the caller's `port`, delivering it if it is pending.
pub fn unmask<P: Platform>(hv: &mut Hypervisor<P>, port: Port) -> Result<(), Errno> {
    let me = hv.current().domid;
    let d = hv.cur_dom();
    let ch = *d.evtchn.get(port)?;
    let vi = d.vcpu(ch.notify_vcpu).ok_or(Errno::EINVAL)?.info();
    if d.bitmaps().unmask(hv.mem(), vi, port) {
        hv.kick_vcpu(VcpuRef { domid: me, vcpu: ch.notify_vcpu });
    }
    Ok(())
}

/// `EVTCHNOP_bind_vcpu`: moves notifications of the caller's `port` to `vcpu`.
pub fn bind_vcpu<P: Platform>(hv: &mut Hypervisor<P>, port: Port, vcpu: u32) -> Result<(), Errno> {
    hv.cur_dom_mut().evtchn.bind_vcpu(port, vcpu)
}

// ---------------------------------------------------------------------------------------------
// The FIFO ABI: not provided. Guests probe it with EVTCHNOP_init_control and fall back to the
// 2-level ABI on an error (Linux does). Arguments Xen 4.17 checks before anything else get
// its errors; a valid request gets -EOPNOTSUPP, what a Xen without FIFO support answers.

/// `EVTCHNOP_init_control`.
pub fn fifo_init_control<P: Platform>(hv: &Hypervisor<P>, vcpu: u32, offset: u32) -> Result<(), Errno> {
    if hv.cur_dom().vcpu(vcpu).is_none() {
        return Err(Errno::ENOENT);
    }
    let offset = offset as usize;
    if offset > hypercall_abi::PAGE_SIZE - fifo::CONTROL_BLOCK_SIZE || !offset.is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    Err(Errno::EOPNOTSUPP)
}

/// `EVTCHNOP_expand_array`: the FIFO ABI was never set up (Xen: -EOPNOTSUPP).
pub fn fifo_expand_array() -> Result<(), Errno> {
    Err(Errno::EOPNOTSUPP)
}

/// `EVTCHNOP_set_priority`: a port that is not valid is -EINVAL; the 2-level ABI has no
/// priorities (Xen: -ENOSYS).
pub fn set_priority<P: Platform>(hv: &Hypervisor<P>, port: Port) -> Result<(), Errno> {
    hv.cur_dom().evtchn.state(port)?;
    Err(Errno::ENOSYS)
}

/// VIRQs bound per domain (on one vCPU) rather than per vCPU.
pub fn is_global_virq(v: u32) -> bool {
    !matches!(v, virq::TIMER | virq::DEBUG | virq::XENOPROF | virq::XENPMU)
}

/// One vCPU's `vcpu_info` (in shared_info, or wherever `VCPUOP_register_vcpu_info` moved it):
/// the upcall flags and pending-word selector through which events reach that vCPU. Its
/// address is 8-byte aligned RAM (the registration refuses anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfoRef {
    /// Machine address of the `vcpu_info`.
    pub ma: u64,
}

pub(crate) const UPCALL_PENDING: u64 = core::mem::offset_of!(VcpuInfo, evtchn_upcall_pending) as u64;
const UPCALL_MASK: u64 = core::mem::offset_of!(VcpuInfo, evtchn_upcall_mask) as u64;
const PENDING_SEL: u64 = core::mem::offset_of!(VcpuInfo, evtchn_pending_sel) as u64;
/// Where a bounced #PF's address goes (`arch.cr2`).
pub const VCPU_INFO_CR2: u64 =
    (core::mem::offset_of!(VcpuInfo, arch) + core::mem::offset_of!(ArchVcpuInfo, cr2)) as u64;
/// Where the PV clock is (`time`).
pub const VCPU_INFO_TIME: u64 = core::mem::offset_of!(VcpuInfo, time) as u64;
const _: () = assert!(UPCALL_PENDING + 1 == UPCALL_MASK, "the exit path reads both as one word");

impl VcpuInfoRef {
    /// `evtchn_upcall_pending` and `evtchn_upcall_mask`.
    pub fn upcall_state(&self, mem: &impl MachineMemory) -> (bool, bool) {
        let mut b = [0u8; 2];
        mem.read(self.ma + UPCALL_PENDING, &mut b);
        (b[0] != 0, b[1] != 0)
    }

    /// Sets `evtchn_upcall_mask`, returning the old value.
    pub fn set_upcall_mask(&self, mem: &impl MachineMemory, masked: bool) -> bool {
        let old = mem.read_u8(self.ma + UPCALL_MASK);
        mem.write_u8(self.ma + UPCALL_MASK, u8::from(masked));
        old != 0
    }

    /// Sets the selector bit of `word` and the upcall flag. Returns true if the vCPU now has
    /// an upcall pending that it did not have before (the caller kicks it).
    fn mark_upcall(&self, mem: &impl MachineMemory, word: usize) -> bool {
        let sel_bit = 1u64 << word;
        if mem.fetch_or_u64(self.ma + PENDING_SEL, sel_bit) & sel_bit != 0 {
            return false;
        }
        self.set_upcall_pending(mem)
    }

    /// Sets `evtchn_upcall_pending`; true if it was clear.
    pub fn set_upcall_pending(&self, mem: &impl MachineMemory) -> bool {
        let was = mem.read_u8(self.ma + UPCALL_PENDING);
        mem.write_u8(self.ma + UPCALL_PENDING, 1);
        was == 0
    }

    /// Marks every selector word as possibly pending and the upcall pending (Xen does so when a
    /// `vcpu_info` moves, so that nothing pending is lost).
    pub fn mark_all_pending(&self, mem: &impl MachineMemory) {
        mem.write_u64(self.ma + PENDING_SEL, !0);
        self.set_upcall_pending(mem);
    }
}

/// The 2-level bitmaps of one domain's shared_info page.
#[derive(Clone, Copy, Debug)]
pub struct Bitmaps {
    pub shared_info: Mfn,
}

impl Bitmaps {
    fn word_ma(&self, off: usize) -> u64 {
        self.shared_info.addr() + off as u64
    }

    /// Marks `port` pending for the vCPU whose `vcpu_info` is `vi`, as Xen's
    /// `evtchn_2l_set_pending` does. Returns true if the vCPU now has an upcall pending that it
    /// did not have before (the caller kicks it).
    pub fn set_pending(&self, mem: &impl MachineMemory, vi: VcpuInfoRef, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        if mem.fetch_or_u64(self.word_ma(SharedInfo::pending_word_offset(w)), bit) & bit != 0 {
            return false;
        }
        if mem.read_u64(self.word_ma(SharedInfo::mask_word_offset(w))) & bit != 0 {
            return false;
        }
        vi.mark_upcall(mem, w)
    }

    /// Unmasks `port`; if it is pending, marks the vCPU's upcall as `set_pending` would.
    pub fn unmask(&self, mem: &impl MachineMemory, vi: VcpuInfoRef, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        let old = mem.fetch_and_u64(self.word_ma(SharedInfo::mask_word_offset(w)), !bit);
        if old & bit != 0 && mem.read_u64(self.word_ma(SharedInfo::pending_word_offset(w))) & bit != 0 {
            return vi.mark_upcall(mem, w);
        }
        false
    }

    /// Clears `port`'s pending bit (on close).
    pub fn clear_pending(&self, mem: &impl MachineMemory, port: Port) {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        mem.fetch_and_u64(self.word_ma(SharedInfo::pending_word_offset(w)), !bit);
    }

    /// True if `port` is pending.
    pub fn is_pending(&self, mem: &impl MachineMemory, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        mem.read_u64(self.word_ma(SharedInfo::pending_word_offset(w))) & bit != 0
    }

    /// True if `port` is masked.
    pub fn is_masked(&self, mem: &impl MachineMemory, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        mem.read_u64(self.word_ma(SharedInfo::mask_word_offset(w))) & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakeMemory;

    #[test]
    fn alloc_free_and_limits() {
        let mut t = EventChannels::new(1, 4);
        let a = t.alloc(PortState::Unbound { remote: DomId(0) }, 0).unwrap();
        let b = t.alloc(PortState::Ipi, 0).unwrap();
        let c = t.alloc(PortState::Virq(virq::TIMER), 0).unwrap();
        assert_eq!((a, b, c), (Port(1), Port(2), Port(3)));
        assert_eq!(t.alloc(PortState::Ipi, 0), Err(Errno::ENOSPC));
        assert_eq!(t.virq_port(0, virq::TIMER), Some(c));
        t.free(c).unwrap();
        assert_eq!(t.virq_port(0, virq::TIMER), None);
        assert_eq!(t.free(c).unwrap_err(), Errno::EINVAL);
        assert_eq!(t.get(Port(0)).unwrap_err(), Errno::EINVAL);
        assert_eq!(t.get(Port(99999)).unwrap_err(), Errno::EINVAL);
        assert_eq!(t.alloc(PortState::Ipi, 0), Ok(Port(3)));
    }

    #[test]
    fn two_level_delivery_follows_xen() {
        let mem = FakeMemory::new(4, 0);
        let bm = Bitmaps { shared_info: Mfn(1) };
        let v0 = VcpuInfoRef { ma: Mfn(1).addr() };
        // First event: pending bit, selector bit and upcall flag all set; kick needed.
        assert!(bm.set_pending(&mem, v0, Port(70)));
        assert!(bm.is_pending(&mem, Port(70)));
        assert_eq!(v0.upcall_state(&mem), (true, false));
        // Already pending: nothing more to do.
        assert!(!bm.set_pending(&mem, v0, Port(70)));
        // Same selector word, upcall already pending: no kick.
        assert!(!bm.set_pending(&mem, v0, Port(71)));
        // A masked port becomes pending silently; unmask delivers it.
        mem.write_u8(v0.ma, 0);
        mem.write_u64(v0.ma + 8, 0);
        mem.write_u64(Mfn(1).addr() + SharedInfo::mask_word_offset(0) as u64, 1 << 5);
        assert!(!bm.set_pending(&mem, v0, Port(5)));
        assert!(bm.unmask(&mem, v0, Port(5)));
        assert!(!bm.is_masked(&mem, Port(5)));
        assert_eq!(v0.upcall_state(&mem), (true, false));
        // A vcpu_info registered elsewhere (another frame) gets the upcall there.
        let moved = VcpuInfoRef { ma: Mfn(2).addr() + 64 };
        assert!(bm.set_pending(&mem, moved, Port(200)));
        assert_eq!(moved.upcall_state(&mem), (true, false));
        assert_eq!(mem.read_u64(moved.ma + 8), 1 << 3);
    }
}
