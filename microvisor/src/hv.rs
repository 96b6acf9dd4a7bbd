//! The hypervisor: all domains and the scheduler behind the entry points the architecture
//! layer calls (hypercalls, exceptions, the timer) and the exit path that decides what runs
//! next and in what state.
//!
//! Protocol with the arch layer: every entry either finishes in registers (the hypercall fast
//! path) or leaves the running vCPU's registers in a [`GuestFrame`] and then calls
//! [`Hypervisor::resume`], which switches vCPUs, delivers pending events by building bounce
//! frames, and returns everything the arch layer must apply as one value ([`GuestExit`]).
//! The arch layer writes no core state: it calls entry points and reads views.

use crate::domain::{Domain, DomainState, Domains, MemQuota, ShutdownReason};
use crate::domain_lifecycle::DomainSpec;
use crate::event;
use crate::guest_mem::GuestSpace;
use crate::hypercall::{self, Hc};
use crate::irq::{IrqOp, IrqOps, Pirqs};
use crate::mm::frame_table::FrameTable;
use crate::mm::tlb::Flush;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::sched::{Scheduler, VcpuRef};
use crate::time;
use crate::time::TimeBase;
use crate::trace::Tracer;
use crate::traps;
use crate::vcpu::{GuestFrame, RunState, Vcpu};
use alloc::string::String;
use core::fmt::{self, Write};
use hypercall_abi::microvisor::trace::Record;
use hypercall_abi::vcpu::{runstate, VcpuRunstateInfo};
use hypercall_abi::xen::vmasst;
use hypercall_abi::{DomId, Errno, Mfn};

/// Values written to QEMU's exit device when the machine stops.
pub use hypercall_abi::microvisor::exit as exit_code;

/// What the arch layer does after `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Apply this and return to the guest whose registers are in the live frame.
    Guest(GuestExit),
    /// Nothing can run: wait for an interrupt, then call `resume` again.
    Idle,
    /// Stop the machine with this exit value.
    Halt(u8),
}

/// Everything the arch layer must apply before it returns to the guest, as one value: the
/// running vCPU's hardware state, the TLB flush and interrupt-controller changes the
/// hypercalls asked for, and the next timer deadline. When `resume` hands it out the core
/// owes nothing more (see [`Hypervisor::hypercall_general`] for why that matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestExit {
    pub hw: HwState,
    /// Apply before the guest runs; a CR3 load covers a `Page` flush only for non-global
    /// entries.
    pub flush: Flush,
    pub irq: IrqOps,
    /// Earliest time (ns) the timer must interrupt at, if any.
    pub timer_deadline_ns: Option<u64>,
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
    /// Generation of the vCPU's guest GDT (see `Vcpu::gdt`); the entries are
    /// [`Hypervisor::running_gdt`].
    pub gdt_generation: u64,
    /// The domain may use I/O ports directly (dom0, for its device drivers).
    pub io_ports: bool,
    /// Machine address of the vCPU's `vcpu_info`, whose `{evtchn_upcall_pending,
    /// evtchn_upcall_mask}` word the hypercall return paths test in place (8-byte aligned,
    /// in RAM).
    pub vcpu_info: u64,
    /// The guest's CR4 bits the CPU must hold while it runs (TSD, FSGSBASE).
    pub guest_cr4: u64,
    /// The guest's DR7 if a breakpoint is enabled (then DR0-DR3 and DR6 are
    /// [`Hypervisor::running_debugregs`]), else 0: no guest breakpoint may stay armed.
    pub dr7: u64,
    /// Bumped whenever the vCPU's debug registers change.
    pub debug_generation: u64,
    /// The vCPU's `MSR_TSC_AUX` (loaded where the CPU has one).
    pub tsc_aux: u32,
}

/// What a hypercall made with nothing but registers hands back to the arch layer
/// ([`Hypervisor::hypercall_general`]): the value for `%rax`, and whether to return straight
/// to the guest, run the exit path, or carry out a TLB flush first (a local flush or `invlpg`
/// costs the instruction, not an exit path). Two words, so it comes back in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallReturn {
    pub rax: u64,
    /// [`HypercallReturn::STRAIGHT`], [`HypercallReturn::SLOW`], or the flush encoded
    /// ([`HypercallReturn::flush`]).
    exit: u64,
}

impl HypercallReturn {
    const STRAIGHT: u64 = 0;
    const SLOW: u64 = 1;
    const FLUSH_ALL: u64 = 2;
    /// A page flush: the page's address with these low bits (any address in the page is the
    /// same `invlpg`).
    const FLUSH_PAGE: u64 = 3;

    fn new(rax: u64, slow: bool, flush: Flush) -> HypercallReturn {
        let exit = match (slow, flush) {
            (true, _) => Self::SLOW,
            (false, Flush::None) => Self::STRAIGHT,
            (false, Flush::All) => Self::FLUSH_ALL,
            (false, Flush::Page(va)) => (va & !(hypercall_abi::PAGE_SIZE as u64 - 1)) | Self::FLUSH_PAGE,
        };
        HypercallReturn { rax, exit }
    }

    /// The exit path must run: the arch layer builds the live frame and calls `resume`.
    #[inline(always)]
    pub fn slow(&self) -> bool {
        self.exit == Self::SLOW
    }

    /// Nothing to do but return (the common case, one compare).
    #[inline(always)]
    pub fn straight(&self) -> bool {
        self.exit == Self::STRAIGHT
    }

    /// The flush to carry out before returning straight to the guest.
    #[inline(always)]
    pub fn flush(&self) -> Flush {
        match self.exit {
            Self::STRAIGHT | Self::SLOW => Flush::None,
            Self::FLUSH_ALL => Flush::All,
            page => Flush::Page(page & !Self::FLUSH_PAGE),
        }
    }
}

/// What the exit path owes, accumulated by handlers until [`Hypervisor::resume`] applies it
/// or hands it to the arch layer. Only the methods below change it, and each but
/// [`Hypervisor::request_flush`] sets `pending`, the one flag the hypercall return path
/// tests; a flush alone is handed back by that path ([`HypercallReturn::flush`]).
#[derive(Clone, Copy, Debug, Default)]
struct ExitWork {
    /// Anything below is owed, or the guest's FPU registers were saved (formatting) and must
    /// be reloaded, or the CPU must be resynchronised with the running vCPU.
    pending: bool,
    /// Run the scheduler.
    resched: bool,
    flush: Flush,
    irq: IrqOps,
    /// Re-execute the hypercall that finished on the register-only path with these
    /// arguments (a continuation); its frame did not exist when the handler ran.
    continuation: Option<[u64; 5]>,
}

/// Of the hypervisor's fixed heap (16 MiB, beside the per-frame part that holds the frame
/// table), what domains may be committed: their fixed parts and quotas. The rest is the
/// trace buffer (4 MiB when tracing), the boot-time tables and slack for fragmentation.
pub const HV_MEM_POOL: usize = 10 << 20;

/// The core's options on the hypervisor command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `arch_debug=domu`: domUs may read the debug hypercall's frame counts and the longest
    /// page-table operation (for tests that check the hypervisor's accounting from a domU);
    /// by default they are dom0's.
    pub arch_debug_domu: bool,
    /// `guest_loglvl=all` (Xen's option): domUs' console output is not rate-limited.
    pub guest_console_unlimited: bool,
}

impl Options {
    pub fn parse(cmdline: &str) -> Options {
        let mut o = Options::default();
        for opt in cmdline.split_whitespace() {
            match opt {
                "arch_debug=domu" => o.arch_debug_domu = true,
                "guest_loglvl=all" | "guest_loglvl=all/all" => o.guest_console_unlimited = true,
                _ => {}
            }
        }
        o
    }
}

/// The earliest of every vCPU's one-shot timer, kept so that the exit path does not scan
/// every vCPU of every domain on each return to a guest.
#[derive(Clone, Copy, Debug, Default)]
struct TimerCache {
    earliest: Option<u64>,
    /// The running vCPU's next periodic tick (periodic timers tick only while their vCPU
    /// runs, as Xen stops them when it is descheduled).
    periodic: Option<u64>,
    /// The earlier of the two.
    next: Option<u64>,
    /// A one-shot timer changed (or a vCPU went away) since `earliest` was computed.
    dirty: bool,
}

impl TimerCache {
    fn set_periodic(&mut self, p: Option<u64>) {
        self.periodic = p;
        self.next = earlier(self.earliest, p);
    }
}

/// The earlier of two optional times.
#[inline]
fn earlier(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole hypervisor state. The fields are the core's own: subsystems reach their state
/// through the crate, the arch layer through the methods below (entry points that return what
/// it must apply, and read-only views).
pub struct Hypervisor<P: Platform> {
    pub(crate) plat: P,
    /// Every machine frame: owner, references, page type.
    pub(crate) frames: FrameTable,
    /// First frame of the (physically contiguous) M2P table.
    pub(crate) m2p_base: Mfn,
    pub(crate) domains: Domains,
    /// The run queue and the one record of the current vCPU.
    pub(crate) sched: Scheduler,
    pub(crate) time: TimeBase,
    exit: ExitWork,
    /// The earliest guest timer, recomputed only after one changed.
    timers: TimerCache,
    /// Set when the machine must stop, with the exit value (stays set: every later `resume`
    /// halts).
    halt: Option<u8>,
    /// Whose x87/SSE state the CPU's registers hold. The hypervisor is built without SSE, so
    /// the registers keep the running guest's state across hypercalls; only formatting (the
    /// precompiled libcore uses SSE) and vCPU switches disturb them, and both save first.
    fpu_loaded: Option<VcpuRef>,
    /// GSIs mapped as pirqs.
    pub(crate) pirqs: Pirqs,
    /// The heap committed to domains (each one's fixed part and quota) out of
    /// [`HV_MEM_POOL`].
    pub(crate) hv_mem_pool: MemQuota,
    /// The hypervisor's command line.
    cmdline: String,
    options: Options,
    /// Event trace (off unless enabled at boot).
    pub(crate) trace: Tracer,
    /// Frame-table audit every N hypercalls (off unless `audit=<N>` at boot).
    pub(crate) audit: crate::audit::Audit,
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
            exit: ExitWork { pending: true, ..ExitWork::default() },
            halt: None,
            timers: TimerCache::default(),
            fpu_loaded: None,
            pirqs: Pirqs::default(),
            hv_mem_pool: MemQuota::new(HV_MEM_POOL),
            cmdline: String::new(),
            options: Options::default(),
            trace: Tracer::default(),
            audit: crate::audit::Audit::default(),
            next_domid: 0,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Boot-time set-up and read-only views for the arch layer

    /// Sets the hypervisor's command line (`XENVER_commandline`) and the core's options in it
    /// ([`Options`]).
    pub fn set_cmdline(&mut self, cmdline: &str) {
        self.cmdline = String::from(cmdline);
        self.options = Options::parse(cmdline);
    }

    /// The core's options from the command line.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The hypervisor's command line.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Turns the run-time frame-table audit on (`audit=<N>`).
    pub fn enable_audit(&mut self, audit: crate::audit::Audit) {
        self.audit = audit;
    }

    /// Stops the machine as a hypervisor fault (a failed audit).
    pub(crate) fn halt_hypervisor_fault(&mut self) {
        self.halt = Some(exit_code::HYPERVISOR_FAULT);
        self.exit.pending = true;
    }

    /// Starts recording the event trace into a buffer of `capacity` bytes.
    pub fn enable_trace(&mut self, capacity: usize) {
        self.trace = Tracer::enabled(capacity, self.time.tsc_hz);
    }

    /// True if the event trace is recording.
    pub fn trace_on(&self) -> bool {
        self.trace.is_on()
    }

    /// The trace recorded so far, if tracing was on (recording stops).
    pub fn finish_trace(&mut self) -> Option<&[u8]> {
        self.trace.is_on().then(|| self.trace.finish())
    }

    /// The machine the core runs on.
    pub fn platform(&self) -> &P {
        &self.plat
    }

    pub fn mem(&self) -> &P::Mem {
        self.plat.mem()
    }

    /// The time base (TSC at boot, rate and scale).
    pub fn time(&self) -> &TimeBase {
        &self.time
    }

    /// Frames on the free list.
    pub fn nr_free_frames(&self) -> u64 {
        self.frames.nr_free()
    }

    /// Hands frames `first..end` (boot modules, once their domains are built) to the free pool.
    pub fn release_to_free(&mut self, first: Mfn, end: Mfn) {
        self.frames.release_to_free(first, end);
    }

    /// A zeroed frame for the hypervisor's own use (the floor benchmark's address space).
    pub fn alloc_xen_frame(&mut self) -> Option<Mfn> {
        self.frames.alloc_xen_frame(self.plat.mem())
    }

    /// Returns a frame from [`Hypervisor::alloc_xen_frame`].
    pub fn free_xen_frame(&mut self, mfn: Mfn) {
        let _ = self.frames.free_frame(self.plat.mem(), mfn);
    }

    /// Tells the frame table the arch layer flushed every TLB entry, global ones included.
    pub fn tlb_flushed(&mut self) {
        self.frames.tlb_flushed();
    }

    /// Writes M2P entry `mfn` := `pfn` (the table guests read at `MACH2PHYS_VIRT_START`).
    pub fn set_m2p(&self, mfn: Mfn, pfn: u64) {
        set_m2p(self.plat.mem(), self.m2p_base, self.frames.max_mfn(), mfn, pfn);
    }

    /// System time now, in ns since boot.
    pub fn now_ns(&self) -> u64 {
        self.time.now_ns(self.plat.tsc())
    }

    // -----------------------------------------------------------------------------------------
    // Exit work: what handlers owe the exit path

    /// Asks for the scheduler on the way out.
    pub(crate) fn resched(&mut self) {
        self.exit.resched = true;
        self.exit.pending = true;
    }

    /// Notes that the CPU must be resynchronised with the running vCPU on the way out.
    pub(crate) fn mark_hw_dirty(&mut self) {
        self.exit.pending = true;
    }

    /// Records a TLB flush the guest must not run without. It needs no exit path of its own:
    /// the register-only hypercall return carries it out (see [`HypercallReturn`]); every
    /// other return to a guest goes through `resume`, which hands it over.
    pub(crate) fn request_flush(&mut self, f: Flush) {
        self.exit.flush = self.exit.flush.merge(f);
    }

    /// Queues an interrupt-controller change (applied before the next return to a guest).
    pub(crate) fn queue_irq_op(&mut self, op: IrqOp) {
        self.exit.irq.push(op);
        self.exit.pending = true;
    }

    /// True once the machine is to stop (handlers stop batches early).
    pub(crate) fn halting(&self) -> bool {
        self.halt.is_some()
    }

    /// True while the running vCPU's domain may go on with a batch of calls: it is alive and
    /// the machine is not stopping. With no exit work owed the answer needs no look: the exit
    /// path (the only place that clears exit work) returns only to a live domain with the
    /// machine running, and everything that ends either asks for the exit path (a shutdown or
    /// the destruction of the running domain reschedules, a halt sets it; no other domain can
    /// pause the running one).
    #[inline(always)]
    pub(crate) fn caller_alive(&self) -> bool {
        !self.exit.pending || (!self.halting() && self.cur_dom().is_alive())
    }

    /// Saves the guest FPU state the registers hold, so code that may use SSE can run.
    pub fn fpu_save_live(&mut self) {
        if let Some(r) = self.fpu_loaded.take() {
            self.exit.pending = true;
            if let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) {
                self.plat.fpu_save(&mut v.fpu);
            }
        }
    }

    /// Loads the running vCPU's FPU state unless the registers already hold it.
    fn fpu_load_running(&mut self) {
        let running = self.sched.current();
        if self.fpu_loaded == running {
            return;
        }
        self.fpu_save_live();
        if let Some(r) = running {
            if let Some(v) = self.domains.get(&r.domid).and_then(|d| d.vcpu(r.vcpu)) {
                self.plat.fpu_restore(&v.fpu);
                self.fpu_loaded = Some(r);
            }
        }
    }

    /// Prints a hypervisor message: `(XEN) <msg>`.
    pub fn log(&mut self, args: fmt::Arguments<'_>) {
        self.fpu_save_live();
        xen_line(&mut self.plat, args);
    }

    // -----------------------------------------------------------------------------------------
    // Domains

    /// Allocates the next domain id.
    pub(crate) fn alloc_domid(&mut self) -> DomId {
        while self.domains.contains_key(&DomId(self.next_domid)) {
            self.next_domid += 1;
        }
        let id = DomId(self.next_domid);
        self.next_domid += 1;
        id
    }

    /// Builds a PV domain from a Xen ELF image and makes its boot vCPU runnable (see
    /// [`crate::domain_lifecycle::create_domain`]).
    pub fn create_domain(&mut self, spec: &DomainSpec<'_>, image: &[u8]) -> Result<DomId, String> {
        crate::domain_lifecycle::create_domain(self, spec, image)
    }

    /// Makes a domain's vCPUs that are set up runnable.
    pub(crate) fn start_domain(&mut self, id: DomId) {
        let Some(d) = self.domains.get(&id) else { return };
        for v in d.vcpus.iter().filter(|v| v.state == RunState::Runnable) {
            self.sched.wake(VcpuRef { domid: id, vcpu: v.id });
        }
    }

    /// Makes a blocked vCPU runnable (Xen's `vcpu_unblock`).
    pub(crate) fn kick_vcpu(&mut self, r: VcpuRef) {
        let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) else { return };
        if v.state == RunState::Blocked {
            v.state = RunState::Runnable;
            // Its runstate moves from blocked to runnable now; kept exactly only for vCPUs
            // whose guest reads it (the clock read is not free on the event path).
            if v.runstate_area.is_some() && self.sched.current() != Some(r) {
                let now = self.time.now_ns(self.plat.tsc());
                v.runstate.set(hypercall_abi::vcpu::runstate::RUNNABLE, now);
            }
            self.sched.wake(r);
        }
    }

    /// Takes a vCPU off the CPU (it blocked or went offline) and asks for the scheduler.
    pub(crate) fn sleep_vcpu(&mut self, r: VcpuRef) {
        self.sched.sleep(r);
        self.resched();
    }

    /// Shuts a domain down with `reason`: its vCPUs stop, dom0 is told (VIRQ_DOM_EXC), and
    /// dom0's own shutdown stops the machine.
    pub(crate) fn shutdown_domain(&mut self, id: DomId, reason: ShutdownReason) {
        let Some(d) = self.domains.get_mut(&id) else { return };
        if !d.is_alive() && d.state != DomainState::Paused {
            return;
        }
        d.state = DomainState::Shutdown(reason);
        for v in d.vcpus.iter_mut() {
            v.state = RunState::Offline;
            v.set_timer_deadline(None);
        }
        self.timers.dirty = true;
        let d = self.domains.get_mut(&id).expect("checked above");
        let mut pending: heapless::Vec<u8, { crate::console::LINE_MAX }> = heapless::Vec::new();
        d.console.flush(|l| {
            let _ = pending.extend_from_slice(l);
        });
        if !pending.is_empty() {
            self.guest_console_line(id, &pending);
        }
        let refused = self.domains.get_mut(&id).map_or(0, |d| d.console_limit.take_suppressed());
        if refused > 0 {
            self.log(format_args!("d{}: {refused} console line(s) suppressed (rate limit)", id.0));
        }
        self.sched.remove_domain(id);
        self.resched();
        self.fpu_save_live();
        let name = &self.domains[&id].name;
        xen_line(&mut self.plat, format_args!("Domain {} ({name}) shut down: {}", id.0, reason.name()));
        if id == DomId::DOM0 {
            self.stop_machine(reason);
        } else {
            event::send_global_virq(self, DomId::DOM0, hypercall_abi::xen::virq::DOM_EXC);
        }
    }

    /// Crashes a domain that broke a rule, with a one-line reason on the console.
    pub fn crash_domain(&mut self, id: DomId, why: fmt::Arguments<'_>) {
        let vcpu = self.sched.current().filter(|r| r.domid == id).map_or(0, |r| r.vcpu);
        self.log(format_args!("d{}v{} crashed: {}", id.0, vcpu, why));
        self.shutdown_domain(id, ShutdownReason::Crash);
    }

    /// Prints the frame accounting: free frames and each domain's.
    #[cfg(feature = "test-aids")]
    pub(crate) fn dump_memory(&mut self) {
        self.fpu_save_live();
        xen_line(&mut self.plat, format_args!("memory: {} frames free", self.frames.nr_free()));
        for d in self.domains.values() {
            let owned = self.frames.tot_pages(d.id);
            xen_line(&mut self.plat, format_args!("  d{} ({}): {owned} frames", d.id.0, d.name));
        }
    }

    fn stop_machine(&mut self, dom0_reason: ShutdownReason) {
        self.fpu_save_live();
        for d in self.domains.values() {
            let what = match d.state {
                DomainState::Shutdown(r) => r.name(),
                DomainState::Running => "still running",
                DomainState::Paused => "paused",
                DomainState::Dying => "dying",
            };
            xen_line(&mut self.plat, format_args!("  d{} ({}): {what}", d.id.0, d.name));
        }
        let code =
            if dom0_reason == ShutdownReason::Poweroff { exit_code::POWEROFF } else { exit_code::DOM0_CRASH };
        self.log(format_args!("dom0 {}: stopping the machine", dom0_reason.name()));
        self.halt = Some(code);
        self.exit.pending = true;
        self.audit_at_stop();
    }

    /// Prints a complete guest console line as `(d<id>) line`, within the domain's console
    /// allowance; the first line printed after refused ones says how many were refused.
    pub(crate) fn guest_console_line(&mut self, id: DomId, line: &[u8]) {
        let Some(d) = self.domains.get_mut(&id) else { return };
        let (time, plat) = (&self.time, &self.plat);
        // The prefix and newline go to the UART too.
        let Some(refused) = d.console_limit.admit_with(|| time.now_ns(plat.tsc()), line.len() + 8) else {
            return;
        };
        self.fpu_save_live();
        if refused > 0 {
            xen_line(
                &mut self.plat,
                format_args!("d{}: {refused} console line(s) suppressed (rate limit)", id.0),
            );
        }
        let mut w = ConsoleLine::new(b"(d");
        let _ = write!(w, "{}) ", id.0);
        w.push(line);
        w.finish(&mut self.plat);
    }

    // -----------------------------------------------------------------------------------------
    // The running vCPU

    /// The running vCPU's domain and vCPU. Entry points only run with a vCPU running.
    #[inline]
    pub fn current(&self) -> VcpuRef {
        self.sched.current().expect("an entry from a guest always has a running vCPU")
    }

    /// Takes `vcpu`'s segment bases back from the CPU if it holds them, before anything reads
    /// or replaces the vCPU's copy (a mode toggle, a switch away, `set_segment_base`, the
    /// emulated MSRs): the guest may have changed them by loading `%fs`/`%gs`. Not while the
    /// hypervisor's own change waits for the exit path (`bases_pending`).
    ///
    /// Call [`Hypervisor::bases_changed`] after changing them.
    pub(crate) fn refresh_segment_bases(&mut self, r: VcpuRef) {
        let pending =
            self.domains.get(&r.domid).and_then(|d| d.vcpu(r.vcpu)).is_none_or(|v| v.arch.bases_pending);
        if pending {
            return;
        }
        if let Some((fs, gs)) = self.plat.live_segment_bases(r) {
            if let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) {
                v.fs_base = fs;
                if v.kernel_mode {
                    v.gs_base_kernel = gs;
                } else {
                    v.gs_base_user = gs;
                }
            }
        }
    }

    /// Notes that the running vCPU's segment bases (or its active GS base) changed here: the
    /// exit path must load them, and until then they are the truth.
    pub(crate) fn bases_changed(&mut self) {
        self.cur_vcpu_mut().arch.bases_pending = true;
        self.mark_hw_dirty();
    }

    /// The running domain.
    pub(crate) fn cur_dom(&self) -> &Domain {
        let r = self.current();
        &self.domains[&r.domid]
    }

    /// The running domain, mutably.
    pub(crate) fn cur_dom_mut(&mut self) -> &mut Domain {
        let r = self.current();
        self.domains.get_mut(&r.domid).expect("running domain exists")
    }

    /// The running vCPU.
    pub(crate) fn cur_vcpu(&self) -> &Vcpu {
        let r = self.current();
        self.domains[&r.domid].vcpu(r.vcpu).expect("running vCPU exists")
    }

    /// The running vCPU, mutably.
    pub(crate) fn cur_vcpu_mut(&mut self) -> &mut Vcpu {
        let r = self.current();
        self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)).expect("running vCPU exists")
    }

    /// The running vCPU's address space, for copying arguments.
    #[inline(always)]
    pub(crate) fn guest(&self) -> GuestSpace<'_, P> {
        self.guest_space(self.cur_vcpu().current_l4())
    }

    /// The address space at `l4`, for copying. The copy goes through the MMU when `l4` is
    /// loaded, unless a TLB flush is owed: until it happens the CPU may still hold
    /// translations the guest has given up (an unmapped page, a frame that changed type or
    /// owner), which the guest cannot use before the flush and neither may the hypervisor.
    #[inline(always)]
    pub(crate) fn guest_space(&self, l4: Mfn) -> GuestSpace<'_, P> {
        let flush_owed = self.exit.flush != Flush::None || self.frames.flush_pending();
        GuestSpace::with_mmu(&self.plat, l4, !flush_owed)
    }

    /// The running vCPU's current page tables, given what they were (`last`) before the calls
    /// made since: looked up again only if exit work is owed. Every change to them asks for
    /// the exit path (the CPU must load them there), which is what the register-only return
    /// relies on too; for loops of calls (multicall) that copy between them.
    #[inline(always)]
    pub(crate) fn current_l4_since(&self, last: Mfn) -> Mfn {
        if self.exit.pending {
            self.cur_vcpu().current_l4()
        } else {
            last
        }
    }

    /// The running vCPU's validated guest GDT entries (see [`HwState::gdt_generation`]).
    pub fn running_gdt(&self) -> &[u64] {
        &self.cur_vcpu().gdt
    }

    /// The running vCPU's DR0-DR3 and DR6, to load with [`HwState::dr7`].
    pub fn running_debugregs(&self) -> ([u64; 4], u64) {
        let d = &self.cur_vcpu().arch.debug;
        (d.dr, d.dr6)
    }

    /// The running vCPU's validated LDT descriptors (`MMUEXT_SET_LDT`; same generation).
    pub fn running_ldt(&self) -> &[u64] {
        &self.cur_vcpu().ldt
    }

    /// The `%ds`, `%es`, `%fs`, `%gs` selectors to load as the running vCPU comes onto the
    /// CPU, after its GDT and LDT ([`Hypervisor::running_gdt`], [`Hypervisor::running_ldt`]):
    /// the ones it left the CPU with, null for any those tables no longer let ring 0 load
    /// (`traps::data_selector_loads`: a sibling's `update_descriptor`, its own `set_gdt` or
    /// `SET_LDT` since). Checked here, when they are loaded, rather than on every exit: while
    /// the vCPU stays on the CPU they are not loaded at all (the guest loads its own).
    pub fn running_data_selectors(&self) -> [u16; 4] {
        let v = self.cur_vcpu();
        v.data_sels.map(|s| if traps::data_selector_loads(&v.gdt, &v.ldt, s) { s } else { 0 })
    }

    /// True if the running vCPU has an event to deliver: `evtchn_upcall_pending` set and
    /// `evtchn_upcall_mask` clear, read as one word as Xen's exit path does.
    #[inline]
    fn upcall_deliverable(&self, v: &Vcpu) -> bool {
        self.mem().read_u64(v.vcpu_info + crate::event::UPCALL_PENDING) & 0xffff == 1
    }

    /// What the hardware must be set to for the running vCPU, which the exit path is about to
    /// load: from here on the CPU's segment bases are the truth (`bases_pending` cleared). One
    /// look at the vCPU for both.
    fn hw_state_to_load(&mut self) -> HwState {
        let r = self.current();
        let d = self.domains.get_mut(&r.domid).expect("running domain exists");
        let io_ports = d.privileged;
        let v = d.vcpu_mut(r.vcpu).expect("running vCPU exists");
        v.arch.bases_pending = false;
        HwState {
            vcpu: r,
            cr3: v.current_l4().addr(),
            kernel_mode: v.kernel_mode,
            fs_base: v.fs_base,
            gs_base: v.active_gs_base(),
            fpu_ts: v.fpu_ts,
            gdt_generation: v.gdt_generation,
            io_ports,
            vcpu_info: v.vcpu_info,
            guest_cr4: v.arch.cr4 & crate::cpu_state::HARDWARE_CR4_MASK,
            dr7: if v.arch.debug.active() { v.arch.debug.dr7 } else { 0 },
            debug_generation: v.arch.debug_generation,
            tsc_aux: v.arch.tsc_aux,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Entry points

    /// A hypercall from guest kernel mode with nothing but registers (`%rax` and the five
    /// argument registers) — every hypercall but the one the arch layer's fast path answers
    /// (`xen_version(XENVER_version)`, see `arch/x86_64/entry.rs`). Returns the value for
    /// `%rax`, whether the exit path must run and, if not, the TLB flush to carry out.
    ///
    /// The contract with the assembly: when `slow` is false, the core owes nothing but the
    /// returned flush, and the arch layer may carry it out and `sysretq` after its own test of
    /// the running vCPU's `vcpu_info` word (an event to deliver). The exit path leaves nothing
    /// owed either ([`Resume::Guest`] hands everything over), which is what lets the
    /// register-only fast path answer without asking the core at all.
    ///
    /// Inlined into the arch layer's one caller: a call here cost every hypercall its own
    /// prologue, epilogue and register moves.
    #[inline(always)]
    pub fn hypercall_general(&mut self, nr: u64, args: &[u64; 5]) -> HypercallReturn {
        self.trace_hypercall(nr, args[0]);
        let hc = hypercall::dispatch_in_place::<P, false>(self, nr, args, None);
        self.trace_hypercall_done(nr, &hc);
        self.after_hypercall(nr, &hc);
        let rax = match hc {
            Hc::Ret(r) => r as u64,
            Hc::Continue(a) => {
                self.exit.continuation = Some(a);
                self.exit.pending = true;
                // `%rax` must still hold the number when the `syscall` re-executes.
                nr
            }
            Hc::FrameDone => {
                self.exit.pending = true;
                Errno::ENOSYS.to_ret() as u64
            }
        };
        if self.exit.pending {
            HypercallReturn::new(rax, true, Flush::None)
        } else {
            HypercallReturn::new(rax, false, core::mem::take(&mut self.exit.flush))
        }
    }

    /// Full-frame path: a `syscall` whose registers are all in `frame` — from guest user mode
    /// or from 32-bit code (bounced to the guest kernel), or a hypercall that needs the frame
    /// (`iret`). The arch layer then runs the exit path.
    pub fn syscall_with_frame(&mut self, frame: &mut GuestFrame) {
        if !self.cur_vcpu().kernel_mode || frame.cs == u64::from(hypercall_abi::xen::FLAT_RING3_CS32) {
            if let Err(e) = traps::guest_syscall(self, frame) {
                let id = self.current().domid;
                self.crash_domain(id, format_args!("{e}"));
            }
            return;
        }
        let nr = frame.rax;
        self.trace_hypercall(nr, frame.rdi);
        let hc = hypercall::dispatch(self, nr, frame.hypercall_args(), Some(frame));
        self.trace_hypercall_done(nr, &hc);
        self.after_hypercall(nr, &hc);
        match hc {
            Hc::Ret(r) => frame.rax = r as u64,
            Hc::Continue(a) => {
                frame.set_hypercall_args(a);
                frame.rip = frame.rip.wrapping_sub(2);
            }
            Hc::FrameDone => {}
        }
    }

    /// Tracing off costs every hypercall one flag test here; the record is out of line.
    #[inline(always)]
    fn trace_hypercall(&mut self, nr: u64, a1: u64) {
        if self.trace.is_on() {
            self.record_hypercall(nr, a1);
        }
    }

    #[inline(never)]
    fn record_hypercall(&mut self, nr: u64, a1: u64) {
        let (tsc, r) = (self.plat.tsc(), self.current());
        self.trace.record(&Record::Hypercall { tsc, vcpu: (r.domid.0, r.vcpu), nr, a1 });
    }

    #[inline(always)]
    fn trace_hypercall_done(&mut self, nr: u64, hc: &Hc) {
        if self.trace.is_on() {
            self.record_hypercall_done(nr, hc);
        }
    }

    #[inline(never)]
    fn record_hypercall_done(&mut self, nr: u64, hc: &Hc) {
        let ret = match *hc {
            Hc::Ret(r) => r,
            Hc::Continue(_) | Hc::FrameDone => nr as i64,
        };
        let (tsc, r) = (self.plat.tsc(), self.current());
        self.trace.record(&Record::HypercallDone { tsc, vcpu: (r.domid.0, r.vcpu), nr, ret });
    }

    /// Flushes the frame table owes (a frame changed type or owner) must happen before the
    /// guest runs again; then the frame-table audit, when `audit=<N>` asked for it.
    #[inline]
    fn after_hypercall(&mut self, nr: u64, hc: &Hc) {
        if self.frames.take_flush_pending() {
            self.request_flush(Flush::All);
        }
        self.audit_after_hypercall(nr, !matches!(hc, Hc::Continue(_)));
    }

    /// An exception from a guest (the arch layer read CR2 for a #PF): emulate, bounce to the
    /// guest's handler, or crash the domain. The arch layer then runs the exit path.
    /// A crash prints the guest's state as it faulted (`crash_report`).
    pub fn guest_exception(&mut self, frame: &mut GuestFrame, vector: u8, info: u64) {
        let at_fault = *frame;
        if let traps::ExceptionOutcome::Crash(why) = traps::guest_exception(self, frame, vector, info) {
            crate::crash_report::crash_with_report(self, &at_fault, format_args!("{why}"));
        }
    }

    /// The exit path. Applies a continuation left by a register-only hypercall, switches
    /// vCPUs when the running one stopped or its slice ended, writes the PV clock of a vCPU
    /// being switched in, delivers a pending event by bouncing to the guest's event callback,
    /// and hands the arch layer everything it must apply.
    pub fn resume(&mut self, frame: &mut GuestFrame) -> Resume {
        loop {
            if let Some(code) = self.halt {
                return Resume::Halt(code);
            }
            let prev = self.sched.current();
            if self.exit.continuation.is_some() {
                if let (Some(args), Some(_)) = (self.exit.continuation.take(), prev) {
                    frame.set_hypercall_args(args);
                    frame.rip = frame.rip.wrapping_sub(2);
                }
            }
            // The clock is read only when a pick may be due: asked for, the current vCPU
            // stopped, or others wait (whose turn comes when the slice ends). Otherwise
            // `must_pick` is false at any time, and the common exit (an upcall, an `iret` with
            // nothing else to run) saves the TSC read and its scaling.
            let resched = core::mem::take(&mut self.exit.resched);
            if resched || !self.sched.current_runnable() || self.sched.queued() > 0 {
                let now = self.now_ns();
                if resched || self.sched.must_pick(now) {
                    let next = self.sched.pick(now);
                    if next != prev {
                        self.switch_to(frame, prev, next, now);
                    }
                }
            }
            let Some(r) = self.sched.current() else { return Resume::Idle };
            let d = &self.domains[&r.domid];
            let v = d.vcpu(r.vcpu).expect("scheduled vCPU exists");
            if !d.is_alive() || v.state != RunState::Runnable {
                // Every path that stops a vCPU tells the scheduler; this is a safety net.
                self.sched.sleep(r);
                continue;
            }
            if self.upcall_deliverable(v) {
                if let Err(why) = traps::deliver_event(self, frame) {
                    self.crash_domain(r.domid, format_args!("{why}"));
                    continue;
                }
            }
            // The last check before any return to a guest (see traps::check_return_rip).
            if let Err(why) = traps::check_return_rip(self, frame) {
                self.crash_domain(r.domid, format_args!("{why}"));
                continue;
            }
            self.fpu_load_running();
            let (flush, irq) = (self.exit.flush, self.exit.irq);
            self.exit = ExitWork::default();
            return Resume::Guest(GuestExit {
                hw: self.hw_state_to_load(),
                flush,
                irq,
                timer_deadline_ns: self.next_deadline_ns(),
            });
        }
    }

    /// Saves the live frame into the outgoing vCPU and loads the incoming one's; both
    /// vCPUs' run time and runstate are accounted at `now`.
    fn switch_to(&mut self, frame: &mut GuestFrame, prev: Option<VcpuRef>, next: Option<VcpuRef>, now: u64) {
        if let Some(p) = prev {
            self.refresh_segment_bases(p);
            let sels = self.plat.live_data_selectors(p);
            if let Some(v) = self.domains.get_mut(&p.domid).and_then(|d| d.vcpu_mut(p.vcpu)) {
                v.frame = *frame;
                if let Some(s) = sels {
                    v.data_sels = s;
                }
                v.runstate.leave_cpu(v.state, now);
                if v.runstate_area.is_some() {
                    self.publish_runstate(p);
                }
            }
        }
        if self.trace.is_on() {
            let id = |r: Option<VcpuRef>| r.map(|r| (r.domid.0, r.vcpu));
            let tsc = self.plat.tsc();
            self.trace.record(&Record::Switch { tsc, from: id(prev), to: id(next) });
        }
        self.exit.pending = true;
        if let Some(n) = next {
            let tsc = self.plat.tsc();
            let v = self
                .domains
                .get_mut(&n.domid)
                .and_then(|d| d.vcpu_mut(n.vcpu))
                .expect("scheduled vCPU exists");
            *frame = v.frame;
            v.runstate.enter_cpu(now);
            time::write_pvclock(self.plat.mem(), v.vcpu_info + event::VCPU_INFO_TIME, &self.time, tsc);
            // The rarer work, for vCPUs that registered areas or run a periodic timer (the
            // guests here stop the default one at boot, as Linux does).
            if v.runstate_area.is_some() || v.time_area.is_some() || v.periodic_period_ns != 0 {
                let periodic = v.periodic_deadline();
                self.timers.set_periodic(periodic);
                self.publish_runstate(n);
                self.publish_time_area(n, tsc);
                if periodic.is_some_and(|t| t <= now) {
                    self.periodic_tick(n, now);
                }
                return;
            }
        }
        if self.timers.periodic.is_some() {
            self.timers.set_periodic(None);
        }
    }

    /// Copies vCPU `r`'s runstate into its registered runstate area, through its kernel page
    /// tables, as Xen's `update_runstate_area` (with `VMASST_TYPE_runstate_update_flag`, the
    /// area's `state_entry_time` carries `XEN_RUNSTATE_UPDATE` while it changes). A fault is
    /// the guest's business: the area simply is not updated.
    pub(crate) fn publish_runstate(&self, r: VcpuRef) {
        let Some(d) = self.domains.get(&r.domid) else { return };
        let Some(v) = d.vcpu(r.vcpu) else { return };
        let Some(va) = v.runstate_area else { return };
        let space = self.guest_space(v.kernel_l4);
        let info = runstate_info(&v.runstate);
        let at_entry = va.wrapping_add(core::mem::offset_of!(VcpuRunstateInfo, state_entry_time) as u64);
        let flagged = d.vm_assist & (1 << vmasst::TYPE_RUNSTATE_UPDATE_FLAG) != 0;
        if flagged
            && space.write_obj(at_entry, &(info.state_entry_time | runstate::XEN_RUNSTATE_UPDATE)).is_err()
        {
            return;
        }
        let mut w = info;
        if flagged {
            w.state_entry_time |= runstate::XEN_RUNSTATE_UPDATE;
        }
        if space.write_obj(va, &w).is_ok() && flagged {
            let _ = space.write_obj(at_entry, &info.state_entry_time);
        }
    }

    /// Writes vCPU `r`'s PV clock into its registered secondary time area.
    pub(crate) fn publish_time_area(&self, r: VcpuRef, tsc: u64) {
        let Some(v) = self.domains.get(&r.domid).and_then(|d| d.vcpu(r.vcpu)) else { return };
        if let Some(va) = v.time_area {
            time::write_guest_pvclock(&self.guest_space(v.kernel_l4), va, &self.time, tsc);
        }
    }

    /// The periodic timer of running vCPU `r` ticks: VIRQ_TIMER, next tick a period later.
    fn periodic_tick(&mut self, r: VcpuRef, now: u64) {
        if let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) {
            v.periodic_last_ns = now;
            event::send_vcpu_virq(self, r, hypercall_abi::xen::virq::TIMER);
        }
        self.refresh_periodic();
    }

    /// Arms (or with `None` stops) vCPU `r`'s one-shot timer at absolute system time `t`.
    pub(crate) fn set_vcpu_timer(&mut self, r: VcpuRef, t: Option<u64>) {
        if let Some(v) = self.domains.get_mut(&r.domid).and_then(|d| d.vcpu_mut(r.vcpu)) {
            if v.timer_deadline() != t {
                v.set_timer_deadline(t);
                self.timers.dirty = true;
            }
        }
    }

    /// Earliest time (ns) at which the timer must interrupt: the end of the running vCPU's
    /// slice or the earliest guest timer.
    pub fn next_deadline_ns(&mut self) -> Option<u64> {
        if core::mem::take(&mut self.timers.dirty) {
            self.timers.earliest =
                self.domains.values().flat_map(|d| d.vcpus.iter()).filter_map(|v| v.timer_deadline()).min();
            self.timers.next = earlier(self.timers.earliest, self.timers.periodic);
        }
        earlier(self.sched.slice_end_ns().filter(|_| self.sched.queued() > 0), self.timers.next)
    }

    /// Refreshes the cached next periodic tick of the running vCPU (after a tick or a change
    /// of its period; a switch sets it directly).
    pub(crate) fn refresh_periodic(&mut self) {
        let p =
            self.sched.current().and_then(|r| self.domains.get(&r.domid)?.vcpu(r.vcpu)?.periodic_deadline());
        self.timers.set_periodic(p);
    }

    /// A device interrupt on `gsi` (the arch layer has masked the pin): tell the owner.
    pub fn pirq_fired(&mut self, gsi: u32) {
        let Some(p) = self.pirqs.get_mut(&gsi) else { return };
        let (owner, port) = (p.owner, p.port);
        if let Some(port) = port {
            p.in_service = true;
            event::set_pending(self, owner, port);
        }
    }

    /// The timer interrupt: fires expired guest timers (VIRQ_TIMER) and asks for a reschedule
    /// when the slice ended.
    pub fn timer_tick(&mut self) {
        let now = self.now_ns();
        // Recompute the earliest timer afresh after every tick, whatever changed.
        self.timers.dirty = true;
        for id in (0..self.domains.id_bound()).map(DomId) {
            let Some(d) = self.domains.get_mut(&id) else { continue };
            for vcpu in 0..d.vcpus.len() as u32 {
                let Some(v) = self.domains.get_mut(&id).and_then(|d| d.vcpu_mut(vcpu)) else { continue };
                if v.timer_deadline().is_some_and(|t| t <= now) {
                    v.set_timer_deadline(None);
                    event::send_vcpu_virq(self, VcpuRef { domid: id, vcpu }, hypercall_abi::xen::virq::TIMER);
                }
            }
        }
        if let Some(r) = self.sched.current().filter(|_| self.sched.current_runnable()) {
            if self.timers.periodic.is_some_and(|t| t <= now) {
                self.periodic_tick(r, now);
            }
        }
        if self.sched.slice_expired(now) {
            self.resched();
        }
    }
}

/// A vCPU's runstate as the ABI lays it out.
pub(crate) fn runstate_info(r: &crate::vcpu::Runstate) -> VcpuRunstateInfo {
    VcpuRunstateInfo { state: r.state, _pad: 0, state_entry_time: r.entry_ns, time: r.time }
}

/// Writes M2P entry `mfn` := `pfn` in the table starting at frame `base`.
pub fn set_m2p(mem: &impl MachineMemory, base: Mfn, max_mfn: Mfn, mfn: Mfn, pfn: u64) {
    if mfn < max_mfn {
        mem.write_u64(base.addr() + mfn.0 * 8, pfn);
    }
}

/// Prints `(XEN) <msg>` (the caller saved the guest's FPU state: formatting may use SSE).
fn xen_line(plat: &mut impl Platform, args: fmt::Arguments<'_>) {
    let mut w = ConsoleLine::new(b"(XEN) ");
    let _ = w.write_fmt(args);
    w.finish(plat);
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
