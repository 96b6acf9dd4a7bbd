//! The hypervisor: all domains and the scheduler behind the entry points the architecture
//! layer calls (hypercalls, exceptions, the timer) and the exit path that decides what runs
//! next and in what state.
//!
//! Protocol with the arch layer: every entry either finishes in registers (the hypercall fast
//! path) or leaves the running vCPU's registers in a [`GuestFrame`] and then calls
//! [`Hypervisor::resume`], which switches vCPUs, delivers pending events by building bounce
//! frames, and reports what the hardware must be set to ([`HwState`]).

use crate::domain::{Domain, DomainConfig, DomainState, Domains, ShutdownReason};
use crate::hypercall::EvtchnOps;
use crate::mm::frame_table::FrameTable;
use crate::mm::tlb::Flush;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::sched::{Scheduler, VcpuRef};
use crate::time::TimeBase;
use crate::vcpu::{GuestFrame, RunState};
use alloc::collections::BTreeMap;
use core::fmt::{self, Write};
use hypercall_abi::microvisor::trace::Record;
use hypercall_abi::xen::SharedInfo;
use hypercall_abi::{DomId, Mfn};

/// Values written to QEMU's exit device when the machine stops.
pub use hypercall_abi::microvisor::exit as exit_code;

/// What the arch layer does after `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Return to the guest whose registers are in the live frame.
    Guest,
    /// Nothing can run: wait for an interrupt, then call `resume` again.
    Idle,
    /// Stop the machine with this exit value.
    Halt(u8),
}

/// The hardware state the running vCPU needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwState {
    pub vcpu: VcpuRef,
    /// CR3 value (L4 machine address).
    pub cr3: u64,
    pub kernel_mode: bool,
    pub fs_base: u64,
    /// GS base of the current guest mode.
    pub gs_base: u64,
    /// The guest's virtual CR0.TS.
    pub fpu_ts: bool,
    /// Generation of the vCPU's guest GDT (see `Vcpu::gdt`).
    pub gdt_generation: u64,
    /// The domain may use I/O ports directly (dom0, for its device drivers).
    pub io_ports: bool,
}

/// Edits the slow exit path must make to the frame of a hypercall that finished on the fast
/// path (the frame did not exist yet when the handler ran).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PendingFrameEdit {
    /// Re-execute the hypercall with these arguments (a continuation).
    pub continuation: Option<[u64; 5]>,
}

/// The whole hypervisor state.
pub struct Hypervisor<P: Platform> {
    pub plat: P,
    /// Every machine frame: owner, references, page type.
    pub frames: FrameTable,
    /// First frame of the (physically contiguous) M2P table.
    pub m2p_base: Mfn,
    pub domains: Domains,
    pub sched: Scheduler,
    pub time: TimeBase,
    /// The vCPU whose registers are in the live frame.
    pub running: Option<VcpuRef>,
    /// Something changed that needs the scheduler on the way out (set with `resched`).
    pub need_resched: bool,
    pub(crate) pending_edit: PendingFrameEdit,
    pub flush: Flush,
    /// A handler changed state the hardware must reflect (page-table base, segment bases,
    /// virtual TS, a TLB flush), so the exit path must resynchronise the CPU (set with
    /// `mark_hw_dirty`).
    pub hw_dirty: bool,
    /// The fast path must take the exit path: a reschedule, hardware state to change, a halt,
    /// or the FPU registers no longer holding the running vCPU's state. One flag, so the fast
    /// path tests it with one instruction; cleared by the arch layer once the exit path ran.
    pub exit_work: bool,
    /// Machine address of the running vCPU's `vcpu_info`, for the fast path's upcall check.
    pub cur_vcpu_info: u64,
    /// Whose x87/SSE state the CPU's registers hold. The hypervisor is built without SSE, so
    /// the registers keep the running guest's state across hypercalls; only formatting (the
    /// precompiled libcore uses SSE) and vCPU switches disturb them, and both save first.
    pub fpu_loaded: Option<VcpuRef>,
    /// Set when the machine must stop.
    pub halt: Option<u8>,
    /// GSIs mapped as pirqs (pirq number = GSI).
    pub pirqs: BTreeMap<u32, crate::irq::Pirq>,
    /// Interrupt-controller changes for the arch layer to apply on the way out.
    pub irq_ops: alloc::vec::Vec<crate::irq::IrqOp>,
    /// The hypervisor's command line.
    pub cmdline: alloc::string::String,
    /// Event trace (off unless enabled at boot).
    pub trace: crate::trace::Tracer,
    /// Frame-table audit every N hypercalls (off unless `audit=<N>` at boot).
    pub audit: crate::audit::Audit,
    next_domid: u16,
}

impl<P: Platform> Hypervisor<P> {
    pub fn new(plat: P, frames: FrameTable, m2p_base: Mfn, time: TimeBase) -> Self {
        Hypervisor {
            plat,
            frames,
            m2p_base,
            domains: Domains::new(),
            sched: Scheduler::new(),
            time,
            running: None,
            need_resched: false,
            pending_edit: PendingFrameEdit::default(),
            flush: Flush::None,
            hw_dirty: false,
            exit_work: true,
            cur_vcpu_info: 0,
            fpu_loaded: None,
            halt: None,
            pirqs: BTreeMap::new(),
            irq_ops: alloc::vec::Vec::new(),
            cmdline: alloc::string::String::new(),
            trace: crate::trace::Tracer::default(),
            audit: crate::audit::Audit::default(),
            next_domid: 0,
        }
    }

    pub fn mem(&self) -> &P::Mem {
        self.plat.mem()
    }

    /// Writes M2P entry `mfn` := `pfn` (the table guests read at `MACH2PHYS_VIRT_START`).
    pub fn set_m2p(&self, mfn: Mfn, pfn: u64) {
        set_m2p(self.plat.mem(), self.m2p_base, self.frames.max_mfn(), mfn, pfn);
    }

    /// System time now, in ns since boot.
    pub fn now_ns(&self) -> u64 {
        self.time.now_ns(self.plat.tsc())
    }

    /// Asks for the scheduler on the way out.
    pub fn resched(&mut self) {
        self.need_resched = true;
        self.exit_work = true;
    }

    /// Notes that the CPU must be resynchronised with the running vCPU on the way out.
    pub fn mark_hw_dirty(&mut self) {
        self.hw_dirty = true;
        self.exit_work = true;
    }

    /// Saves the guest FPU state the registers hold, so code that may use SSE can run.
    pub fn fpu_save_live(&mut self) {
        if let Some(r) = self.fpu_loaded.take() {
            self.exit_work = true;
            if let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) {
                self.plat.fpu_save(&mut v.fpu);
            }
        }
    }

    /// Loads the running vCPU's FPU state unless the registers already hold it.
    pub fn fpu_load_running(&mut self) {
        if self.fpu_loaded == self.running {
            return;
        }
        self.fpu_save_live();
        if let Some(r) = self.running {
            let v = self.domains.get(&r.domid).and_then(|d| d.vcpu(r.vcpu)).expect("running vCPU exists");
            self.plat.fpu_restore(&v.fpu);
            self.fpu_loaded = Some(r);
        }
    }

    /// Prints a hypervisor message: `(XEN) <msg>`.
    pub fn log(&mut self, args: fmt::Arguments<'_>) {
        self.fpu_save_live();
        let mut w = ConsoleLine::new(b"(XEN) ");
        let _ = w.write_fmt(args);
        w.finish(&mut self.plat);
    }

    // -----------------------------------------------------------------------------------------
    // Domains

    /// Allocates the next domain id.
    pub fn alloc_domid(&mut self) -> DomId {
        while self.domains.contains_key(&DomId(self.next_domid)) {
            self.next_domid += 1;
        }
        let id = DomId(self.next_domid);
        self.next_domid += 1;
        id
    }

    /// Registers a built domain; its boot vCPU becomes runnable.
    pub fn add_domain(&mut self, id: DomId, cfg: &DomainConfig, shared_info: Mfn) -> &mut Domain {
        let d = Domain::new(id, cfg, shared_info);
        self.domains.insert(id, d);
        self.domains.get_mut(&id).expect("just inserted")
    }

    /// Makes a domain's vCPUs that are set up runnable.
    pub fn start_domain(&mut self, id: DomId) {
        let Some(d) = self.domains.get(&id) else { return };
        let ready: alloc::vec::Vec<u32> =
            d.vcpus.iter().filter(|v| v.state == RunState::Runnable).map(|v| v.id).collect();
        for v in ready {
            self.sched.wake(VcpuRef { domid: id, vcpu: v });
        }
    }

    /// Shuts a domain down with `reason`: its vCPUs stop, dom0 is told (VIRQ_DOM_EXC), and
    /// dom0's own shutdown stops the machine.
    pub fn shutdown_domain(&mut self, id: DomId, reason: ShutdownReason) {
        let Some(d) = self.domains.get_mut(&id) else { return };
        if !d.is_alive() && d.state != DomainState::Paused {
            return;
        }
        d.state = DomainState::Shutdown(reason);
        for v in d.vcpus.iter_mut() {
            v.state = RunState::Offline;
            v.timer_deadline = None;
        }
        let mut pending = alloc::vec::Vec::new();
        d.console.flush(|l| pending.extend_from_slice(l));
        let name = d.name.clone();
        if !pending.is_empty() {
            self.guest_console_line(id, &pending);
        }
        self.sched.remove_domain(id);
        self.resched();
        self.log(format_args!("Domain {} ({}) shut down: {}", id.0, name, reason.name()));
        if id == DomId::DOM0 {
            self.stop_machine(reason);
        } else {
            self.send_global_virq(DomId::DOM0, hypercall_abi::xen::virq::DOM_EXC);
        }
    }

    /// Crashes a domain that broke a rule, with a one-line reason on the console.
    pub fn crash_domain(&mut self, id: DomId, why: fmt::Arguments<'_>) {
        let vcpu = self.running.filter(|r| r.domid == id).map_or(0, |r| r.vcpu);
        self.log(format_args!("d{}v{} crashed: {}", id.0, vcpu, why));
        self.shutdown_domain(id, ShutdownReason::Crash);
    }

    fn stop_machine(&mut self, dom0_reason: ShutdownReason) {
        let summary: alloc::vec::Vec<(u16, alloc::string::String, DomainState)> =
            self.domains.values().map(|d| (d.id.0, d.name.clone(), d.state)).collect();
        for (id, name, state) in summary {
            let what = match state {
                DomainState::Shutdown(r) => r.name(),
                DomainState::Running => "still running",
                DomainState::Paused => "paused",
                DomainState::Dying => "dying",
            };
            self.log(format_args!("  d{id} ({name}): {what}"));
        }
        let code =
            if dom0_reason == ShutdownReason::Poweroff { exit_code::POWEROFF } else { exit_code::DOM0_CRASH };
        self.log(format_args!("dom0 {}: stopping the machine", dom0_reason.name()));
        self.halt = Some(code);
        self.exit_work = true;
        self.audit_at_stop();
    }

    /// Prints a complete guest console line as `(d<id>) line`.
    pub fn guest_console_line(&mut self, id: DomId, line: &[u8]) {
        self.fpu_save_live();
        let mut w = ConsoleLine::new(b"(d");
        let _ = write!(w, "{}) ", id.0);
        w.push(line);
        w.finish(&mut self.plat);
    }

    // -----------------------------------------------------------------------------------------
    // The running vCPU

    /// The running vCPU's domain and vCPU. Entry points only run with a vCPU running.
    pub fn current(&self) -> VcpuRef {
        self.running.expect("an entry from a guest always has a running vCPU")
    }

    /// The running domain.
    pub fn cur_dom(&self) -> &Domain {
        let r = self.current();
        &self.domains[&r.domid]
    }

    /// The running domain, mutably.
    pub fn cur_dom_mut(&mut self) -> &mut Domain {
        let r = self.current();
        self.domains.get_mut(&r.domid).expect("running domain exists")
    }

    /// The running vCPU.
    pub fn cur_vcpu(&self) -> &crate::vcpu::Vcpu {
        let r = self.current();
        self.domains[&r.domid].vcpu(r.vcpu).expect("running vCPU exists")
    }

    /// The running vCPU, mutably.
    pub fn cur_vcpu_mut(&mut self) -> &mut crate::vcpu::Vcpu {
        let r = self.current();
        self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)).expect("running vCPU exists")
    }

    /// True if the running vCPU can no longer run (it blocked, or its domain stopped).
    fn running_is_stopped(&self) -> bool {
        match self.running {
            None => true,
            Some(r) => {
                self.domains
                    .get(&r.domid)
                    .and_then(|d| d.vcpu(r.vcpu))
                    .is_none_or(|v| v.state != RunState::Runnable)
                    || !self.domains[&r.domid].is_alive()
            }
        }
    }

    /// True if the running vCPU has an event to deliver: `evtchn_upcall_pending` set and
    /// `evtchn_upcall_mask` clear, read as one word as Xen's exit path does.
    #[inline]
    pub fn upcall_deliverable(&self) -> bool {
        self.mem().read_u64(self.cur_vcpu_info) & 0xffff == 1
    }

    /// What the hardware must be set to for the running vCPU.
    pub fn hw_state(&self) -> HwState {
        let r = self.current();
        let v = self.cur_vcpu();
        HwState {
            vcpu: r,
            cr3: v.current_l4().addr(),
            kernel_mode: v.kernel_mode,
            fs_base: v.fs_base,
            gs_base: v.active_gs_base(),
            fpu_ts: v.fpu_ts,
            gdt_generation: v.gdt_generation,
            io_ports: self.cur_dom().privileged,
        }
    }

    /// The exit path. Applies edits left by a fast-path hypercall, switches vCPUs when the
    /// running one stopped or its slice ended, writes the PV clock of a vCPU being switched in,
    /// and delivers a pending event by bouncing to the guest's event callback.
    pub fn resume(&mut self, frame: &mut GuestFrame) -> Resume {
        loop {
            if let Some(code) = self.halt {
                return Resume::Halt(code);
            }
            if self.running.is_some() {
                if let Some(args) = self.pending_edit.continuation.take() {
                    frame.set_hypercall_args(args);
                    frame.rip = frame.rip.wrapping_sub(2);
                }
            }
            let now = self.now_ns();
            if self.need_resched || self.running_is_stopped() || self.sched.slice_expired(now) {
                self.need_resched = false;
                let next = self.sched.pick(now);
                if next != self.running {
                    self.switch_to(frame, next, now);
                }
            }
            let Some(_) = self.running else { return Resume::Idle };
            if self.upcall_deliverable() {
                if let Err(why) = crate::traps::deliver_event(self, frame) {
                    let id = self.current().domid;
                    self.crash_domain(id, format_args!("{why}"));
                    continue;
                }
            }
            if self.running_is_stopped() {
                continue;
            }
            return Resume::Guest;
        }
    }

    /// Saves the live frame into the outgoing vCPU and loads the incoming one's.
    fn switch_to(&mut self, frame: &mut GuestFrame, next: Option<VcpuRef>, now: u64) {
        if let Some(prev) = self.running {
            if let Some(v) = self.domains.get_mut(&prev.domid).and_then(|d| d.vcpu_mut(prev.vcpu)) {
                v.frame = *frame;
            }
        }
        if self.trace.is_on() {
            let id = |r: Option<VcpuRef>| r.map(|r| (r.domid.0, r.vcpu));
            let tsc = self.plat.tsc();
            self.trace.record(&Record::Switch { tsc, from: id(self.running), to: id(next) });
        }
        self.running = next;
        self.exit_work = true;
        if let Some(n) = next {
            let tsc = self.plat.tsc();
            let d = self.domains.get_mut(&n.domid).expect("scheduled domain exists");
            self.cur_vcpu_info = d.shared_info.addr() + SharedInfo::vcpu_info_offset(n.vcpu as usize) as u64;
            let v = d.vcpu_mut(n.vcpu).expect("scheduled vCPU exists");
            *frame = v.frame;
            let si = d.shared_info;
            crate::traps::write_pvclock(self.plat.mem(), si, n.vcpu, &self.time, tsc);
            let _ = now;
        }
    }

    /// Earliest time (ns) at which the timer must interrupt: the end of the running vCPU's
    /// slice or the earliest guest timer.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let timers =
            self.domains.values().flat_map(|d| d.vcpus.iter()).filter_map(|v| v.timer_deadline).min();
        match (self.sched.slice_end_ns().filter(|_| self.sched.queued() > 0), timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues an interrupt-controller change (applied before the next return to a guest).
    pub fn queue_irq_op(&mut self, op: crate::irq::IrqOp) {
        self.irq_ops.push(op);
        self.mark_hw_dirty();
    }

    /// A device interrupt on `gsi` (the arch layer has masked the pin): tell the owner.
    pub fn pirq_fired(&mut self, gsi: u32) {
        let Some(p) = self.pirqs.get_mut(&gsi) else { return };
        let (owner, port) = (p.owner, p.port);
        if let Some(port) = port {
            p.in_service = true;
            self.evtchn_set_pending(owner, port);
        }
    }

    /// The timer interrupt: fires expired guest timers (VIRQ_TIMER) and asks for a reschedule
    /// when the slice ended.
    pub fn timer_tick(&mut self) {
        let now = self.now_ns();
        let mut fired = alloc::vec::Vec::new();
        for d in self.domains.values_mut() {
            for v in d.vcpus.iter_mut() {
                if v.timer_deadline.is_some_and(|t| t <= now) {
                    v.timer_deadline = None;
                    fired.push(VcpuRef { domid: d.id, vcpu: v.id });
                }
            }
        }
        for r in fired {
            self.send_vcpu_virq(r, hypercall_abi::xen::virq::TIMER);
        }
        if self.sched.slice_expired(now) {
            self.resched();
        }
    }
}

/// Writes M2P entry `mfn` := `pfn` in the table starting at frame `base`.
pub fn set_m2p(mem: &impl MachineMemory, base: Mfn, max_mfn: Mfn, mfn: Mfn, pfn: u64) {
    if mfn < max_mfn {
        mem.write_u64(base.addr() + mfn.0 * 8, pfn);
    }
}

/// Builds one console line (prefix, text, newline) without allocating, then writes it.
pub(crate) struct ConsoleLine {
    buf: heapless::Vec<u8, 320>,
}

impl ConsoleLine {
    pub fn new(prefix: &[u8]) -> Self {
        let mut c = ConsoleLine { buf: heapless::Vec::new() };
        c.push(prefix);
        c
    }
    pub fn push(&mut self, b: &[u8]) {
        let room = self.buf.capacity() - 1 - self.buf.len();
        let _ = self.buf.extend_from_slice(&b[..b.len().min(room)]);
    }
    pub fn finish(mut self, plat: &mut impl Platform) {
        let _ = self.buf.push(b'\n');
        plat.console_write(&self.buf);
    }
}

impl Write for ConsoleLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}
