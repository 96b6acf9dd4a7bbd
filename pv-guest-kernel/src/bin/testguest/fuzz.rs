//! `fuzz`: the hypercall fuzzer, run from a printed seed (`scenario=fuzz seed=<n> calls=<m>`).
//!
//! Each step draws one operation from a seeded generator and performs it: a hypercall with
//! structure-aware or random arguments (every hypercall and sub-operation, pointers into our
//! own memory, unmapped, non-canonical and hypervisor space), page-table trees built from a
//! pool of pages and torn down again (pin/unpin, `mmu_update`, `update_va_mapping`,
//! `NEW_BASEPTR` onto a clone of our L4, user bases), grant references and handles, event
//! channel ports, nested and malformed multicalls, `iret` frames, segment selectors,
//! privileged and compat-mode instructions, and excursions into guest user mode. Everything
//! the hypervisor may write goes to scratch pages; frames, pages and ports our own kernel
//! needs are never handed to a destructive call (the generators replace them by pool pages),
//! and state a call may legitimately change (trap table, callbacks, kernel stack, segment
//! bases, virtual TS) is restored after it, so a campaign survives its own calls and runs
//! long.
//!
//! Where the answer is known, the fuzzer checks it (oracles): a mapping of a frame we do not
//! own, a grant or port of another domain we were never offered, an operation on another
//! domain a domU may not do — each succeeding is a failure. A trap in our own code is a
//! failure. The hypervisor's frame-table audit (`audit=<N>`) and the host (no hypervisor
//! fault, a neighbour's disk data intact) judge the rest.
//!
//! Each operation draws from its own stream, derived from the seed and its index, so an
//! operation does the same whatever ran before it: `skip=<a>-<b>,...` leaves ranges of
//! operations out, which is how `cargo xtask fuzz --minimize` shrinks a failing campaign to
//! the operations it needs. The last calls are kept in a ring that is printed on failure;
//! `log-from=<n>` prints every call from the n-th on before it is made, so a run that killed
//! the machine can be replayed from its seed to see the call that did it (`cargo xtask fuzz`
//! does this by itself).
//!
//! At the end the fuzzer prints what it issued: `fuzz: calls key=value...` lines, one count
//! per hypercall (the keys of [`tally`]) for the calls it made directly (a multicall counts
//! as one call; `xen_version(XENVER_version)`, answered by the hypervisor's fast path, is
//! counted as `fast` instead). The host compares them with the hypervisor's own tally.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::hypercall::{nr, tally};
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

use super::fuzz_mem::Mem;

/// Operations between progress lines, by default.
const PROGRESS: u64 = 10_000;
/// Operations between resets of the page pool (unpin, unhook, writable again).
const RESET_EVERY: u64 = 2_000;
/// Operations between checks that the runtime's timer port is intact.
const PORT_CHECK_EVERY: u64 = 50;
/// Calls kept for the failure report.
const RING: usize = 40;
/// How much of a direct call's struct argument the oracles keep from before the call.
pub const PRE_BYTES: usize = 64;
/// The fuzzer's own console writes may use this many bytes per second of campaign, and save
/// up at most [`CONSOLE_SAVED`]: well under the hypervisor's allowance for a domU (2 KiB/s,
/// 64 KiB at once), so the allowance never runs dry and our own lines (progress, the call
/// tallies, the verdict) are never the ones refused, however long the campaign.
const CONSOLE_BYTES_PER_S: u64 = 512;
const CONSOLE_SAVED: u64 = 8 << 10;

/// splitmix64: tiny, fast, and every seed gives a full-period stream.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The stream of operation `op` of the campaign from `seed`.
    pub fn for_op(seed: u64, op: u64) -> Rng {
        let mut r = Rng(seed ^ op.wrapping_mul(0xd6e8_feb8_6659_fd93));
        Rng(r.next())
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// A number that is often at an edge: 0, 1, a power of two and its neighbours, all ones,
    /// a sign bit, or anything.
    pub fn edgy(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => self.range(1, 16),
            2 => {
                let b = self.below(64);
                (1u64 << b).wrapping_add(self.range(0, 2)).wrapping_sub(1)
            }
            3 => u64::MAX - self.below(16),
            4 => u64::from(u32::MAX) - self.below(4),
            5 => 1 << 31 | self.below(4),
            6 => 1 << 63 | self.below(4),
            7 => self.below(1 << 16),
            _ => self.next(),
        }
    }
}

/// One call as the failure report shows it.
#[derive(Clone, Copy, Default)]
pub(super) struct Call {
    pub seq: u64,
    pub what: &'static str,
    pub nr: u64,
    pub a: [u64; 5],
    pub ret: i64,
}

/// Bits of [`Fuzzer::restore`]: vCPU state a call may have changed legitimately, put back
/// after the operation.
pub(super) mod restore {
    pub const TRAPS: u32 = 1 << 0;
    pub const CALLBACKS: u32 = 1 << 1;
    pub const STACK: u32 = 1 << 2;
    pub const SEGBASE: u32 = 1 << 3;
    pub const FPU: u32 = 1 << 4;
    pub const BASEPTR: u32 = 1 << 5;
    pub const GDT: u32 = 1 << 6;
    /// Debug registers, virtual IOPL and VM assists: real CPU state since the hypervisor
    /// honours them (a random DR7 arms breakpoints on the fuzzer's own code and data).
    pub const CPU: u32 = 1 << 7;
    pub const ALL: u32 = (1 << 8) - 1;
}

/// Tallies for the report.
pub(super) struct Stats {
    pub hypercalls: u64,
    pub ok: u64,
    pub errors: u64,
    pub traps: u64,
    pub user: u64,
    pub multicalls: u64,
    pub irets: u64,
    pub pins: u64,
    pub baseptr: u64,
    pub grant_maps: u64,
    /// Operations left out (`skip=`).
    pub skipped: u64,
    /// Calls issued directly, by [`tally::bucket`] (the fast-path call aside).
    pub issued: [u64; tally::BUCKETS],
    /// `xen_version(XENVER_version)` calls, which the hypervisor's fast path answers.
    pub fast: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            hypercalls: 0,
            ok: 0,
            errors: 0,
            traps: 0,
            user: 0,
            multicalls: 0,
            irets: 0,
            pins: 0,
            baseptr: 0,
            grant_maps: 0,
            skipped: 0,
            issued: [0; tally::BUCKETS],
            fast: 0,
        }
    }
}

impl Stats {
    /// Prints the issued calls as `fuzz: calls key=value...` lines.
    fn print_issued(&self) {
        let total: u64 = self.issued.iter().sum();
        println!("fuzz: calls total={total} fast={}", self.fast);
        let used: Vec<usize> = (0..tally::BUCKETS).filter(|&b| self.issued[b] != 0).collect();
        for line in used.chunks(8) {
            let fields: String =
                line.iter().map(|&b| format!(" {}={}", tally::Key(b), self.issued[b])).collect();
            println!("fuzz: calls{fields}");
        }
    }
}

/// Operation ranges to leave out: `skip=<a>-<b>,<c>,...` (inclusive).
struct Skip(Vec<(u64, u64)>);

impl Skip {
    fn parse(s: &str) -> Option<Skip> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = (cmdline::parse_u64(a)?, cmdline::parse_u64(b)?);
            v.push((a.min(b), a.max(b)));
        }
        Some(Skip(v))
    }

    fn contains(&self, op: u64) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&op))
    }
}

pub(super) struct Fuzzer {
    pub rng: Rng,
    /// Number of the operation being performed.
    pub seq: u64,
    ring: [Call; RING],
    ring_len: u64,
    log_from: u64,
    pub fails: Vec<String>,
    /// State to put back after the current operation ([`restore`]).
    pub restore: u32,
    pub mem: Mem,
    pub stats: Stats,
    /// Ports and grant handles the fuzzer made.
    pub handles: super::fuzz_calls::Handles,
    /// Ports the runtime needs: xenstore, console (and the timer, asked for when needed).
    pub precious_ports: [u32; 2],
    /// A console write was generated: end the line after the operation.
    pub console_dirty: bool,
    /// Console bytes the fuzzer's writes may still use, as of `console_at` (system time).
    console_credit: u64,
    console_at: u64,
    /// The snippet being generated has its `syscall`.
    pub syscall_emitted: bool,
    /// The first bytes (at most [`PRE_BYTES`]) of a direct call's struct argument as they were
    /// before the call, as many as lie in the scratch pages.
    pub pre: Vec<u8>,
    /// Our domain id, and the neighbour doing disk I/O (never offers us anything).
    pub me: DomId,
    pub peer: Option<DomId>,
}

impl Fuzzer {
    /// Records a failure found by an oracle; the campaign stops after this operation.
    pub fn fail(&mut self, why: String) {
        if self.fails.len() < 16 {
            self.fails.push(why);
        }
    }

    /// Logs (when asked to) and records a call before it is made.
    pub fn note(&mut self, what: &'static str, nr: u64, a: [u64; 5]) {
        if self.seq >= self.log_from {
            println!(
                "fuzz: #{} {what} {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x})",
                self.seq,
                nr::name(nr),
                a[0],
                a[1],
                a[2],
                a[3],
                a[4]
            );
        }
        let i = (self.ring_len % RING as u64) as usize;
        self.ring[i] = Call { seq: self.seq, what, nr, a, ret: 0 };
        self.ring_len += 1;
    }

    /// True if calls are being logged (`log-from=`).
    pub fn logging(&self) -> bool {
        self.seq >= self.log_from
    }

    /// Records the result of the call last noted.
    pub fn noted(&mut self, ret: i64) {
        if self.logging() {
            println!("fuzz: #{} = {ret}", self.seq);
        }
        if self.ring_len > 0 {
            let i = ((self.ring_len - 1) % RING as u64) as usize;
            self.ring[i].ret = ret;
        }
        self.stats.hypercalls += 1;
        if ret >= 0 {
            self.stats.ok += 1;
        } else {
            self.stats.errors += 1;
        }
    }

    /// A hypercall through the hypercall page (or a bare `syscall` for numbers it has no stub
    /// for), noted in the ring.
    pub fn call(&mut self, what: &'static str, n: u64, a: [u64; 5]) -> i64 {
        self.mask_if_needed();
        self.note(what, n, a);
        if n == nr::XEN_VERSION && a[0] == 0 {
            self.stats.fast += 1;
        } else {
            self.stats.issued[tally::bucket(n)] += 1;
        }
        let r = if n < hypercall_abi::hypercall::HYPERCALL_PAGE_STUBS as u64 && n != nr::IRET {
            hypercall::hypercall5(n, a[0], a[1], a[2], a[3], a[4])
        } else {
            hypercall::raw_syscall(n, a[0], a[1], a[2], a[3], a[4])
        };
        self.calm_cpu();
        self.noted(r);
        r
    }

    /// Right after a call that may have set the virtual TS or armed debug registers, before
    /// any of our code runs: clears both. Until [`Fuzzer::put_back`] the trap table may be the
    /// call's, and the #NM of our next SSE instruction (or a breakpoint's #DB) would go to
    /// whatever address it named (seed 20240601: multicalls of set_trap_table and
    /// fpu_taskswitch, then a jump to 0xb_0000_0002 from the oracle's copy of the entries).
    /// Plain hypercalls: no SSE, no memory of ours touched.
    fn calm_cpu(&mut self) {
        if self.restore & restore::FPU != 0 {
            hypercall::hypercall5(nr::FPU_TASKSWITCH, 0, 0, 0, 0, 0);
        }
        if self.restore & restore::CPU != 0 {
            hypercall::hypercall5(nr::SET_DEBUGREG, 7, 0, 0, 0, 0);
        }
    }

    /// While a call may point our callbacks, trap table or kernel stack somewhere else
    /// (until [`Fuzzer::put_back`] restores them), no event may be delivered.
    pub fn mask_if_needed(&mut self) {
        if self.restore & (restore::CALLBACKS | restore::TRAPS | restore::STACK) != 0 {
            core::mem::forget(events::mask_upcalls());
        }
    }

    /// Prints the ring of the last calls, oldest first.
    pub fn dump_ring(&self) {
        let n = self.ring_len.min(RING as u64);
        println!("fuzz: the last {n} calls (operation, what, call, arguments, result):");
        for k in self.ring_len - n..self.ring_len {
            let c = &self.ring[(k % RING as u64) as usize];
            println!(
                "fuzz:   #{} {} {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {}",
                c.seq,
                c.what,
                nr::name(c.nr),
                c.a[0],
                c.a[1],
                c.a[2],
                c.a[3],
                c.a[4],
                c.ret
            );
        }
    }

    /// One operation, chosen by the generator.
    fn step(&mut self) {
        match self.rng.below(100) {
            0..=39 => self.random_hypercall(),
            40..=59 => self.pt_op(),
            60..=66 => self.multicall(),
            67..=76 => self.exec_kernel(),
            77..=81 => self.iret_op(),
            82..=89 => self.user_excursion(),
            90..=96 => self.grant_op(),
            97 => self.balloon_op(),
            _ => self.baseptr_excursion(),
        }
        self.put_back();
    }

    /// How many of the `want` bytes a generated console write may print: all of them while
    /// the fuzzer's share lasts (the line ending the operation adds to it), else none.
    pub fn console_budget(&mut self, want: u64) -> u64 {
        let now = time::now_ns();
        let earned = now.saturating_sub(self.console_at).saturating_mul(CONSOLE_BYTES_PER_S) / 1_000_000_000;
        if earned > 0 {
            self.console_credit = self.console_credit.saturating_add(earned).min(CONSOLE_SAVED);
            self.console_at = now;
        }
        // The prefix and the newline the hypervisor adds, and ours that ends the line.
        let cost = want + 16;
        if self.console_credit >= cost {
            self.console_credit -= cost;
            want
        } else {
            0
        }
    }

    /// Puts back what the operation may have changed (see [`restore`]).
    pub fn put_back(&mut self) {
        if core::mem::take(&mut self.console_dirty) {
            // A console write may have left half a line: end it, so ours stay whole.
            let _ = hypercall::console_write(b"\n");
        }
        let r = core::mem::take(&mut self.restore);
        if r != 0 {
            self.restore_state(r);
        }
        if events::upcalls_masked() {
            events::unmask_upcalls();
        }
        // We run in kernel mode on our own L4 (the hypervisor emulates `mov %cr3` with the
        // base of the mode we are in).
        let cr3 = super::fuzz_mem::read_cr3();
        if cr3 >> 12 != self.mem.real_l4.0 {
            self.fail(format!(
                "after the operation %cr3 reads {cr3:#x}, not our L4 {:#x}",
                self.mem.real_l4.0
            ));
        }
    }
}

/// The scenario.
pub fn run(si: &StartInfo) {
    let cmd = si.cmdline();
    let num = |key, default, max| cmdline::get_u64(cmd, key, default, 0, max).unwrap_or(default);
    let seed = num("seed", 1, u64::MAX);
    let calls = num("calls", 10_000, 1 << 40);
    let log_from = num("log-from", u64::MAX, u64::MAX);
    let progress = num("progress", PROGRESS, 1 << 40).max(1);
    let skip = match cmdline::get(cmd, "skip").map(Skip::parse) {
        None => Skip(Vec::new()),
        Some(Some(s)) => s,
        Some(None) => {
            println!("TEST fuzz FAIL skip= wants <a>-<b>,<c>,... (operation numbers)");
            return;
        }
    };
    let peer = cmdline::get(cmd, "peer").and_then(cmdline::parse_u64).map(|d| DomId(d as u16));
    // The neighbour says when its disk is busy; then the campaign starts, so its I/O runs
    // throughout.
    let me = match super::fuzz_disk::wait_until_ready(si, peer) {
        Ok(me) => me,
        Err(e) => {
            println!("TEST fuzz FAIL cannot set up with the neighbour: {e}");
            return;
        }
    };
    println!("fuzz: seed={seed} calls={calls} domid={} peer={peer:?}", me.0);
    let mut f = match Fuzzer::new(si, seed, log_from, me, peer) {
        Ok(f) => f,
        Err(e) => {
            println!("TEST fuzz FAIL set-up: {e}");
            return;
        }
    };
    let t0 = time::now_ns();
    println!("fuzz: campaign start");
    let mut done = 0;
    while done < calls {
        f.seq = done;
        Fuzzer::exec_op(done);
        if skip.contains(done) {
            f.stats.skipped += 1;
        } else {
            f.rng = Rng::for_op(seed, done);
            f.step();
        }
        done += 1;
        if !f.fails.is_empty() {
            break;
        }
        if done % PORT_CHECK_EVERY == 0 {
            f.check_timer_port(done - PORT_CHECK_EVERY);
            if !f.fails.is_empty() {
                break;
            }
        }
        if done % RESET_EVERY == 0 {
            f.seq = done;
            f.reset_pool();
        }
        if done % progress == 0 {
            println!("fuzz: progress calls={done} hypercalls={}", f.stats.hypercalls);
        }
    }
    f.seq = done;
    if !f.fails.is_empty() {
        // Before the clean-up adds its own calls to the ring.
        f.dump_ring();
    }
    f.reset_pool();
    f.finish();
    let ms = time::now_ns().saturating_sub(t0) / 1_000_000;
    f.stats.print_issued();
    let s = &f.stats;
    let summary = format!(
        "calls={done} hypercalls={} ok={} errors={} traps={} user={} multicalls={} irets={} pins={} baseptr={} grant_maps={} skipped={} ms={ms} seed={seed}",
        s.hypercalls,
        s.ok,
        s.errors,
        s.traps,
        s.user,
        s.multicalls,
        s.irets,
        s.pins,
        s.baseptr,
        s.grant_maps,
        s.skipped
    );
    if f.fails.is_empty() {
        println!("TEST fuzz PASS {summary}");
    } else {
        for e in &f.fails {
            println!("fuzz: failed: {e}");
        }
        let first: String = f.fails[0].chars().take(100).collect();
        println!("TEST fuzz FAIL at call {} seed={seed}: {first}", f.seq);
    }
    if let Err(e) = super::fuzz_disk::announce_done(si, peer) {
        println!("fuzz: cannot tell the neighbour we are done: {e}");
    }
}

impl Fuzzer {
    fn new(
        si: &StartInfo,
        seed: u64,
        log_from: u64,
        me: DomId,
        peer: Option<DomId>,
    ) -> Result<Fuzzer, Errno> {
        let mem = Mem::new(si.shared_info)?;
        Fuzzer::exec_seed(seed);
        let mut f = Fuzzer {
            rng: Rng::new(seed),
            seq: 0,
            ring: [Call::default(); RING],
            ring_len: 0,
            log_from,
            fails: Vec::new(),
            restore: 0,
            mem,
            stats: Stats::default(),
            handles: Default::default(),
            precious_ports: [si.store_evtchn.0, si.console.evtchn.0],
            console_dirty: false,
            console_credit: CONSOLE_SAVED,
            console_at: time::now_ns(),
            syscall_emitted: false,
            pre: Vec::new(),
            me,
            peer,
        };
        f.exec_init()?;
        Ok(f)
    }
}
