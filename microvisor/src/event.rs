//! Event channels, 2-level ABI: each domain's port table, and the pending/mask bitmaps in its
//! shared_info page through which events reach the guest.
//!
//! The port table is plain hypervisor data. The bitmaps live in guest-shared memory and are
//! only touched with atomic read-modify-write operations through [`MachineMemory`], because
//! the guest changes them concurrently (on real SMP) and must never be able to make the
//! hypervisor act on a value it read twice.

use crate::mm::MachineMemory;
use alloc::vec::Vec;
use hypercall_abi::xen::{virq, SharedInfo};
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
    /// A table for a domain with `vcpus` vCPUs and at most `limit` ports (≤ 4096).
    pub fn new(vcpus: u32, limit: u32) -> EventChannels {
        EventChannels {
            ports: alloc::vec![FREE],
            limit: limit.min(EVTCHN_2L_NR_CHANNELS),
            virqs: alloc::vec![[None; virq::NR_VIRQS as usize]; vcpus as usize],
        }
    }

    /// The channel at `port`, if the port number is valid and allocated.
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

/// VIRQs bound per domain (on one vCPU) rather than per vCPU.
pub fn is_global_virq(v: u32) -> bool {
    !matches!(v, virq::TIMER | virq::DEBUG | virq::XENOPROF | virq::XENPMU)
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

    /// Marks `port` pending for `vcpu` as Xen's `evtchn_2l_set_pending` does. Returns true if
    /// the vCPU now has an upcall pending that it did not have before (the caller kicks it).
    pub fn set_pending(&self, mem: &impl MachineMemory, vcpu: u32, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        if mem.fetch_or_u64(self.word_ma(SharedInfo::pending_word_offset(w)), bit) & bit != 0 {
            return false;
        }
        if mem.read_u64(self.word_ma(SharedInfo::mask_word_offset(w))) & bit != 0 {
            return false;
        }
        self.mark_upcall(mem, vcpu, w)
    }

    /// Unmasks `port`; if it is pending, marks the vCPU's upcall as `set_pending` would.
    pub fn unmask(&self, mem: &impl MachineMemory, vcpu: u32, port: Port) -> bool {
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        let old = mem.fetch_and_u64(self.word_ma(SharedInfo::mask_word_offset(w)), !bit);
        if old & bit != 0 && mem.read_u64(self.word_ma(SharedInfo::pending_word_offset(w))) & bit != 0 {
            return self.mark_upcall(mem, vcpu, w);
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

    /// Sets the selector bit of `word` and the vCPU's upcall flag.
    fn mark_upcall(&self, mem: &impl MachineMemory, vcpu: u32, word: usize) -> bool {
        let vi = self.word_ma(SharedInfo::vcpu_info_offset(vcpu as usize));
        let sel_bit = 1u64 << word;
        if mem.fetch_or_u64(vi + 8, sel_bit) & sel_bit != 0 {
            return false;
        }
        let was = mem.read_u8(vi);
        mem.write_u8(vi, 1);
        was == 0
    }

    /// `evtchn_upcall_pending` and `evtchn_upcall_mask` of `vcpu`.
    pub fn upcall_state(&self, mem: &impl MachineMemory, vcpu: u32) -> (bool, bool) {
        let vi = self.word_ma(SharedInfo::vcpu_info_offset(vcpu as usize));
        let mut b = [0u8; 2];
        mem.read(vi, &mut b);
        (b[0] != 0, b[1] != 0)
    }

    /// Sets `evtchn_upcall_mask` of `vcpu`, returning the old value.
    pub fn set_upcall_mask(&self, mem: &impl MachineMemory, vcpu: u32, masked: bool) -> bool {
        let vi = self.word_ma(SharedInfo::vcpu_info_offset(vcpu as usize));
        let old = mem.read_u8(vi + 1);
        mem.write_u8(vi + 1, u8::from(masked));
        old != 0
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
        // First event: pending bit, selector bit and upcall flag all set; kick needed.
        assert!(bm.set_pending(&mem, 0, Port(70)));
        assert!(bm.is_pending(&mem, Port(70)));
        assert_eq!(bm.upcall_state(&mem, 0), (true, false));
        // Already pending: nothing more to do.
        assert!(!bm.set_pending(&mem, 0, Port(70)));
        // Same selector word, upcall already pending: no kick.
        assert!(!bm.set_pending(&mem, 0, Port(71)));
        // A masked port becomes pending silently; unmask delivers it.
        let vi = Mfn(1).addr();
        mem.write_u8(vi, 0);
        mem.write_u64(vi + 8, 0);
        mem.write_u64(Mfn(1).addr() + SharedInfo::mask_word_offset(0) as u64, 1 << 5);
        assert!(!bm.set_pending(&mem, 0, Port(5)));
        assert!(bm.unmask(&mem, 0, Port(5)));
        assert!(!bm.is_masked(&mem, Port(5)));
        assert_eq!(bm.upcall_state(&mem, 0), (true, false));
    }
}
