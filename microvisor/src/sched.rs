//! The scheduler: preemptive round-robin over every runnable vCPU of every domain, on the one
//! physical CPU. A blocked vCPU is simply absent from the run queue, so it costs no CPU until
//! an event wakes it.

use alloc::collections::VecDeque;
use hypercall_abi::DomId;

/// Names one vCPU of one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuRef {
    pub domid: DomId,
    pub vcpu: u32,
}

/// Length of a time slice.
pub const TIME_SLICE_NS: u64 = 10_000_000;

/// The run queue and the current vCPU. The scheduler is the one owner of "current": the vCPU
/// whose registers the CPU holds (the live frame). A current vCPU that blocked, yielded or
/// stopped stays current, no longer runnable, until the exit path's next [`Scheduler::pick`]
/// switches it out.
#[derive(Default)]
pub struct Scheduler {
    /// Runnable vCPUs waiting for the CPU, in order. Its capacity is reserved for every vCPU
    /// that exists ([`Scheduler::reserve`]), so making a vCPU runnable never allocates.
    queue: VecDeque<VcpuRef>,
    /// The vCPU whose registers the CPU holds.
    current: Option<VcpuRef>,
    /// `current` may keep the CPU (it has not blocked, yielded or stopped since it was picked).
    current_runnable: bool,
    /// System time at which the current vCPU's slice ends.
    slice_end_ns: u64,
    /// vCPUs the queue has room for.
    vcpus: usize,
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    /// Makes room in the queue for `vcpus` more vCPUs (a domain being created), so that
    /// waking them later cannot fail.
    pub fn reserve(&mut self, vcpus: usize) -> Result<(), alloc::collections::TryReserveError> {
        let total = self.vcpus.saturating_add(vcpus);
        self.queue.try_reserve(total.saturating_sub(self.queue.len()))?;
        self.vcpus = total;
        Ok(())
    }

    /// Gives back the room of `vcpus` vCPUs (a domain went away).
    pub fn unreserve(&mut self, vcpus: usize) {
        self.vcpus = self.vcpus.saturating_sub(vcpus);
    }

    /// The vCPU whose registers the CPU holds (running, or stopped and not yet switched out).
    #[inline]
    pub fn current(&self) -> Option<VcpuRef> {
        self.current
    }

    /// True if the current vCPU may keep running.
    #[inline]
    pub fn current_runnable(&self) -> bool {
        self.current_runnable
    }

    /// End of the current time slice, while a runnable vCPU holds the CPU.
    pub fn slice_end_ns(&self) -> Option<u64> {
        self.current_runnable.then_some(self.slice_end_ns)
    }

    /// Makes `v` runnable (no effect if it already is).
    pub fn wake(&mut self, v: VcpuRef) {
        if (self.current_runnable && self.current == Some(v)) || self.queue.contains(&v) {
            return;
        }
        // Within the capacity reserved for every vCPU: never allocates.
        self.queue.push_back(v);
    }

    /// Takes `v` off the CPU and out of the queue (it blocked, went offline or died).
    pub fn sleep(&mut self, v: VcpuRef) {
        self.queue.retain(|&q| q != v);
        if self.current == Some(v) {
            self.current_runnable = false;
        }
    }

    /// Takes every vCPU of `domid` off the CPU and out of the queue.
    pub fn remove_domain(&mut self, domid: DomId) {
        self.queue.retain(|q| q.domid != domid);
        if self.current.is_some_and(|c| c.domid == domid) {
            self.current_runnable = false;
        }
    }

    /// True if the current vCPU should give up the CPU at time `now_ns`.
    pub fn slice_expired(&self, now_ns: u64) -> bool {
        self.current_runnable && now_ns >= self.slice_end_ns && !self.queue.is_empty()
    }

    /// True if the exit path must pick at `now_ns`: the current vCPU stopped or its slice
    /// ended with others waiting.
    #[inline]
    pub fn must_pick(&self, now_ns: u64) -> bool {
        !self.current_runnable || self.slice_expired(now_ns)
    }

    /// The current vCPU yields: it goes to the back of the queue if anyone else is waiting.
    pub fn yield_current(&mut self) {
        if let (Some(c), true) = (self.current, self.current_runnable) {
            if !self.queue.is_empty() {
                self.queue.push_back(c);
                self.current_runnable = false;
            }
        }
    }

    /// Picks the vCPU to run at `now_ns` and makes it current: the current one if it still
    /// holds the CPU, otherwise the head of the queue with a fresh slice. `None` means idle.
    pub fn pick(&mut self, now_ns: u64) -> Option<VcpuRef> {
        if let (Some(c), true) = (self.current, self.current_runnable) {
            if now_ns < self.slice_end_ns || self.queue.is_empty() {
                if now_ns >= self.slice_end_ns {
                    self.slice_end_ns = now_ns + TIME_SLICE_NS;
                }
                return Some(c);
            }
            self.queue.push_back(c);
        }
        self.current = self.queue.pop_front();
        self.current_runnable = self.current.is_some();
        self.slice_end_ns = now_ns + TIME_SLICE_NS;
        self.current
    }

    /// Number of vCPUs waiting for the CPU.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Makes `v` current at once, as if picked (host tests acting as another vCPU).
    #[cfg(test)]
    pub fn set_current(&mut self, v: VcpuRef) {
        self.queue.retain(|&q| q != v);
        if let (Some(c), true) = (self.current, self.current_runnable) {
            if c != v {
                self.queue.push_back(c);
            }
        }
        self.current = Some(v);
        self.current_runnable = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(d: u16) -> VcpuRef {
        VcpuRef { domid: DomId(d), vcpu: 0 }
    }

    #[test]
    fn round_robin_on_slice_expiry() {
        let mut s = Scheduler::new();
        s.wake(v(0));
        s.wake(v(1));
        assert_eq!(s.pick(0), Some(v(0)));
        assert_eq!(s.pick(TIME_SLICE_NS - 1), Some(v(0)));
        assert!(s.slice_expired(TIME_SLICE_NS));
        assert_eq!(s.pick(TIME_SLICE_NS), Some(v(1)));
        assert_eq!(s.pick(2 * TIME_SLICE_NS), Some(v(0)));
    }

    #[test]
    fn lone_vcpu_keeps_running_and_blocked_ones_are_skipped() {
        let mut s = Scheduler::new();
        s.wake(v(0));
        assert_eq!(s.pick(0), Some(v(0)));
        assert_eq!(s.pick(5 * TIME_SLICE_NS), Some(v(0)));
        s.sleep(v(0));
        assert_eq!(s.pick(6 * TIME_SLICE_NS), None);
        s.wake(v(1));
        assert_eq!(s.pick(6 * TIME_SLICE_NS), Some(v(1)));
    }

    #[test]
    fn yield_passes_the_cpu() {
        let mut s = Scheduler::new();
        s.wake(v(0));
        s.wake(v(1));
        assert_eq!(s.pick(0), Some(v(0)));
        s.yield_current();
        assert_eq!(s.pick(1), Some(v(1)));
        s.yield_current();
        assert_eq!(s.pick(2), Some(v(0)));
    }

    proptest! {
        /// Whatever happens, a vCPU is never both running and queued, never queued twice,
        /// and every runnable vCPU gets the CPU within one round of slices.
        #[test]
        fn invariants(ops in proptest::collection::vec((0u8..4, 0u16..4), 1..200)) {
            let mut s = Scheduler::new();
            let mut runnable = std::collections::BTreeSet::new();
            let mut now = 0;
            for (op, d) in ops {
                match op {
                    0 => { s.wake(v(d)); runnable.insert(d); }
                    1 => { s.sleep(v(d)); runnable.remove(&d); }
                    2 => s.yield_current(),
                    _ => { now += TIME_SLICE_NS; s.pick(now); }
                }
                let mut seen: Vec<_> = s.queue.iter().copied().collect();
                if let (Some(c), true) = (s.current, s.current_runnable) { seen.push(c); }
                let n = seen.len();
                seen.sort();
                seen.dedup();
                prop_assert_eq!(seen.len(), n, "a vCPU appears twice");
                prop_assert_eq!(n, runnable.len());
            }
            // Fairness: within |runnable| slices everyone runs.
            let mut ran = std::collections::BTreeSet::new();
            for _ in 0..runnable.len() {
                now += TIME_SLICE_NS;
                if let Some(c) = s.pick(now) { ran.insert(c.domid.0); }
            }
            prop_assert_eq!(ran, runnable);
        }
    }
}
