//! The balloon driver: a PV domain gives memory back to the hypervisor and takes it back
//! again, so the toolstack can move memory between domains without rebooting them.
//!
//! Ballooning out a page (Linux's `decrease_reservation` path): take a free page from the
//! allocator, unmap it from the direct map and mark its P2M entry invalid (nothing of ours may
//! reach the frame once someone else owns it), then return the frame with
//! `XENMEM_decrease_reservation`. The pfn stays allocated and is remembered as ballooned.
//! Ballooning in: `XENMEM_populate_physmap` on ballooned pfns gives new frames (and sets
//! their M2P entries); the P2M and the direct map are updated and the pages go back to the
//! allocator.
//!
//! The target comes from the toolstack's `memory/target` xenstore node (KiB), as for Linux's
//! xen-balloon: [`watch_target`] watches it relative to the domain's home, and each event
//! handed to [`handle_event`] re-reads the node and balloons to it. The value is the
//! toolstack's, but it sits in a store a bug or an attacker may have written: anything but a
//! plain decimal number is ignored with a log line ([`parse_target_kib`]), and the target is
//! clamped to `[FLOOR_PAGES, boot size]`. The `balloon=<pages>` boot option
//! ([`apply_cmdline`]) sets a target the same way, for tests without a toolstack. A domain
//! cannot grow beyond the pages it booted with (its P2M has no room for more pfns).
//!
//! [`Balloon`] is the pure bookkeeping (host-tested); the hypercalls are in the kernel part.

use alloc::vec::Vec;
use hypercall_abi::Pfn;

/// Pages handed out or taken back per hypercall (one page of extent list).
pub const BATCH: u64 = 512;

/// What to do next to reach a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The domain has its target size.
    Done,
    /// Give this many pages back to the hypervisor.
    Release(u64),
    /// Take this many ballooned pages back.
    Reclaim(u64),
}

/// Why the bookkeeping refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonError {
    /// The pfn is not one of the domain's.
    OutOfRange(Pfn),
    /// The pfn is already ballooned out.
    AlreadyOut(Pfn),
    /// The list of ballooned pfns could not grow.
    NoMemory,
}

/// Which pfns are ballooned out of a domain of `nr_pages` pages.
#[derive(Debug)]
pub struct Balloon {
    nr_pages: u64,
    /// Never shrink below this many pages.
    floor: u64,
    /// Ballooned pfns, the most recent last (reclaimed first).
    out: Vec<Pfn>,
    /// One bit per pfn: set while ballooned, so a pfn cannot be recorded twice.
    bitmap: Vec<u64>,
}

impl Balloon {
    /// Bookkeeping for a domain of `nr_pages` pages that keeps at least `floor`.
    pub fn new(nr_pages: u64, floor: u64) -> Result<Balloon, BalloonError> {
        let words = usize::try_from(nr_pages.div_ceil(64)).map_err(|_| BalloonError::NoMemory)?;
        let mut bitmap = Vec::new();
        bitmap.try_reserve_exact(words).map_err(|_| BalloonError::NoMemory)?;
        bitmap.resize(words, 0);
        Ok(Balloon { nr_pages, floor: floor.min(nr_pages), out: Vec::new(), bitmap })
    }

    /// Pages the domain has with nothing ballooned out.
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    /// Pages ballooned out.
    pub fn ballooned(&self) -> u64 {
        self.out.len() as u64
    }

    /// Pages the domain has now.
    pub fn current_pages(&self) -> u64 {
        self.nr_pages - self.ballooned()
    }

    /// `target` limited to what this domain can reach: at least the floor, at most its
    /// boot size.
    pub fn clamp(&self, target: u64) -> u64 {
        target.clamp(self.floor, self.nr_pages)
    }

    /// The next batch towards `target` (clamped), at most [`BATCH`] pages.
    pub fn next_step(&self, target: u64) -> Step {
        let target = self.clamp(target);
        let cur = self.current_pages();
        if target < cur {
            Step::Release((cur - target).min(BATCH))
        } else if target > cur {
            Step::Reclaim((target - cur).min(BATCH))
        } else {
            Step::Done
        }
    }

    /// True if `pfn` is ballooned out.
    pub fn is_out(&self, pfn: Pfn) -> bool {
        pfn.0 < self.nr_pages && self.bitmap[(pfn.0 / 64) as usize] & (1 << (pfn.0 % 64)) != 0
    }

    /// Records that `pfns` were given back to the hypervisor. All or nothing.
    pub fn record_released(&mut self, pfns: &[Pfn]) -> Result<(), BalloonError> {
        for (i, &p) in pfns.iter().enumerate() {
            if p.0 >= self.nr_pages {
                return Err(BalloonError::OutOfRange(p));
            }
            if self.is_out(p) || pfns[..i].contains(&p) {
                return Err(BalloonError::AlreadyOut(p));
            }
        }
        self.out.try_reserve(pfns.len()).map_err(|_| BalloonError::NoMemory)?;
        for &p in pfns {
            self.bitmap[(p.0 / 64) as usize] |= 1 << (p.0 % 64);
            self.out.push(p);
        }
        Ok(())
    }

    /// Takes up to `n` ballooned pfns (the most recently released first) for reclaiming;
    /// they are no longer counted as ballooned. Hand back the ones that could not be
    /// reclaimed with [`Balloon::record_released`].
    pub fn take_for_reclaim(&mut self, n: u64) -> Vec<Pfn> {
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(self.out.len());
        let taken = self.out.split_off(self.out.len() - n);
        for p in &taken {
            self.bitmap[(p.0 / 64) as usize] &= !(1 << (p.0 % 64));
        }
        taken
    }
}

/// The toolstack's target node, relative to the domain's home (`/local/domain/<id>`).
pub const TARGET_NODE: &str = "memory/target";
/// The token of the balloon's watch on [`TARGET_NODE`].
pub const WATCH_TOKEN: &str = "balloon:memory/target";
/// Digits a KiB figure may have: `u64::MAX` has 20.
const MAX_DIGITS: usize = 20;

/// Why a `memory/target` value was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing but whitespace.
    Empty,
    /// A character other than a decimal digit (signs, hex, units, embedded NULs included).
    NotDecimal,
    /// More than a u64 of KiB.
    TooLarge,
}

/// The KiB a `memory/target` value asks for: a decimal number (surrounding ASCII whitespace
/// allowed, as `%llu` would skip it). Whatever else is refused, never wrapped or truncated.
pub fn parse_target_kib(value: &[u8]) -> Result<u64, TargetError> {
    let v = value.trim_ascii();
    if v.is_empty() {
        return Err(TargetError::Empty);
    }
    if !v.iter().all(u8::is_ascii_digit) {
        return Err(TargetError::NotDecimal);
    }
    // Leading zeros do not make a number larger.
    let first = v.iter().position(|&c| c != b'0').unwrap_or(v.len());
    if v.len() - first > MAX_DIGITS {
        return Err(TargetError::TooLarge);
    }
    v[first..]
        .iter()
        .try_fold(0u64, |acc, &c| acc.checked_mul(10)?.checked_add(u64::from(c - b'0')))
        .ok_or(TargetError::TooLarge)
}

/// Whole pages in `kib` KiB, rounded down as Linux does (`target >> (PAGE_SHIFT - 10)`).
pub fn kib_to_pages(kib: u64) -> u64 {
    kib / 4
}

/// The balloon's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Pages the domain has now.
    pub current: u64,
    /// The target last asked for, as clamped.
    pub target: u64,
    /// Pages ballooned out.
    pub ballooned: u64,
}

/// A target that could not be reached: how far it got and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub status: Status,
    pub err: hypercall_abi::Errno,
}

/// What one event of the balloon's watch led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetEvent {
    /// `memory/target` could not be read (it may not exist, or the store refused).
    Unreadable(hypercall_abi::Errno),
    /// The value is not a target; nothing changed.
    Ignored(TargetError),
    /// The balloon went for `kib` KiB: it had `before` pages, and this is where it got.
    Followed { kib: u64, before: u64, outcome: Result<Status, Shortfall> },
}

#[cfg(not(test))]
mod kernel {
    use super::*;
    use crate::xenbus::{Transport, TxId, WatchEvent, Xenbus};
    use crate::{cmdline, hypercall, mm, println};
    use hypercall_abi::memory::{op, XenMemoryReservation};
    use hypercall_abi::{DomId, Errno, Mfn};
    use spin::Mutex;

    /// Pages a domain keeps whatever its target says (4 MiB: the kernel, its heap and page
    /// tables live below this).
    pub const FLOOR_PAGES: u64 = 1024;

    struct State {
        balloon: Balloon,
        target: u64,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    fn reservation(list: &mut [u64]) -> XenMemoryReservation {
        XenMemoryReservation {
            extent_start: list.as_mut_ptr() as u64,
            nr_extents: list.len() as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: DomId::SELF,
            _pad: [0; 6],
        }
    }

    /// `memory_op(cmd)` over `list`: the number of extents done.
    fn reservation_op(cmd: u32, list: &mut [u64]) -> Result<usize, Errno> {
        let mut r = reservation(list);
        let done = hypercall::check(hypercall::memory_op(cmd, &mut r))?;
        Ok((done as usize).min(list.len()))
    }

    /// Gives up to `n` free pages back to the hypervisor; returns how many went.
    fn release(b: &mut Balloon, n: u64) -> Result<u64, Errno> {
        let mut pfns: Vec<Pfn> = Vec::new();
        pfns.try_reserve_exact(n as usize).map_err(|_| Errno::ENOMEM)?;
        let mut first_err = None;
        for _ in 0..n {
            match mm::alloc_page() {
                Ok(p) => pfns.push(p.pfn),
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        let mut mfns: Vec<Mfn> = Vec::new();
        if let Err(e) = mm::release_frames(&pfns, &mut mfns) {
            first_err = first_err.or(Some(e));
        }
        let mut list: Vec<u64> = Vec::new();
        list.try_reserve_exact(mfns.len()).map_err(|_| Errno::ENOMEM)?;
        list.extend(mfns.iter().map(|m| m.0));
        let k = if list.is_empty() {
            0
        } else {
            reservation_op(op::DECREASE_RESERVATION, &mut list).unwrap_or_else(|e| {
                first_err = first_err.or(Some(e));
                0
            })
        };
        if k < mfns.len() && first_err.is_none() {
            first_err = Some(Errno::ENOMEM);
        }
        // Frames the hypervisor did not take are still ours: map them back. A page that
        // cannot be mapped back stays allocated (lost to this domain, but never reachable).
        let restored = mm::restore_frames(&pfns[k..mfns.len()], &mfns[k..]).unwrap_or_else(|e| {
            first_err = first_err.or(Some(e));
            0
        });
        b.record_released(&pfns[..k]).map_err(|_| Errno::ENOMEM)?;
        for p in pfns[k..k + restored].iter().chain(&pfns[mfns.len()..]) {
            let _ = mm::free_page(*p);
        }
        match first_err {
            Some(e) if k == 0 => Err(e),
            _ => Ok(k as u64),
        }
    }

    /// Takes up to `n` ballooned pages back; returns how many came.
    fn reclaim(b: &mut Balloon, n: u64) -> Result<u64, Errno> {
        let pfns = b.take_for_reclaim(n);
        let mut list: Vec<u64> = pfns.iter().map(|p| p.0).collect();
        let got = reservation_op(op::POPULATE_PHYSMAP, &mut list);
        let k = *got.as_ref().unwrap_or(&0);
        let mfns: Vec<Mfn> = list[..k].iter().map(|&m| Mfn(m)).collect();
        let restored = mm::restore_frames(&pfns[..k], &mfns);
        let r = *restored.as_ref().unwrap_or(&0);
        for p in &pfns[..r] {
            let _ = mm::free_page(*p);
        }
        // What did not come back (or could not be mapped) stays ballooned.
        b.record_released(&pfns[r..]).map_err(|_| Errno::ENOMEM)?;
        got?;
        restored?;
        if r == 0 && !pfns.is_empty() {
            return Err(Errno::ENOMEM);
        }
        Ok(r as u64)
    }

    /// Moves the domain towards `pages` pages (clamped to `[FLOOR_PAGES, boot size]`),
    /// batch by batch. On a shortfall the balloon stays where it got to.
    pub fn set_target(pages: u64) -> Result<Status, Shortfall> {
        let mut g = STATE.lock();
        if g.is_none() {
            let Some(info) = mm::info() else {
                return Err(Shortfall { status: Status::default(), err: Errno::ENODEV });
            };
            let balloon = Balloon::new(info.nr_pages, FLOOR_PAGES)
                .map_err(|_| Shortfall { status: Status::default(), err: Errno::ENOMEM })?;
            *g = Some(State { target: info.nr_pages, balloon });
        }
        let st = g.as_mut().expect("initialised above");
        st.target = st.balloon.clamp(pages);
        loop {
            let r = match st.balloon.next_step(st.target) {
                Step::Done => return Ok(snapshot(st)),
                Step::Release(n) => release(&mut st.balloon, n),
                Step::Reclaim(n) => reclaim(&mut st.balloon, n),
            };
            match r {
                Ok(0) => return Err(Shortfall { status: snapshot(st), err: Errno::ENOMEM }),
                Ok(_) => {}
                Err(err) => return Err(Shortfall { status: snapshot(st), err }),
            }
        }
    }

    fn snapshot(st: &State) -> Status {
        Status { current: st.balloon.current_pages(), target: st.target, ballooned: st.balloon.ballooned() }
    }

    /// The balloon's figures (`None` before the first target).
    pub fn status() -> Option<Status> {
        STATE.lock().as_ref().map(snapshot)
    }

    /// True if `pfn` is ballooned out (its frame belongs to the hypervisor).
    pub fn is_ballooned(pfn: Pfn) -> bool {
        STATE.lock().as_ref().is_some_and(|s| s.balloon.is_out(pfn))
    }

    /// Watches `memory/target` (relative to our home, so the toolstack's node for this
    /// domain); xenstored fires the watch once at once, so the first event brings the
    /// current target.
    pub fn watch_target<T: Transport>(xb: &mut Xenbus<T>) -> Result<(), Errno> {
        xb.watch(TARGET_NODE, WATCH_TOKEN)
    }

    /// Follows `memory/target` if `ev` is the balloon's watch event (`None` otherwise): reads
    /// the node again (events say that it changed, not to what) and balloons to it, as
    /// Linux's `watch_target` does. Bad values and shortfalls are logged; so is every move.
    pub fn handle_event<T: Transport>(xb: &mut Xenbus<T>, ev: &WatchEvent) -> Option<TargetEvent> {
        (ev.token == WATCH_TOKEN).then(|| follow_target(xb))
    }

    /// Reads `memory/target` and balloons to it.
    pub fn follow_target<T: Transport>(xb: &mut Xenbus<T>) -> TargetEvent {
        let value = match xb.read(TxId::NONE, TARGET_NODE) {
            Ok(v) => v,
            Err(e) => {
                println!("balloon: cannot read {TARGET_NODE}: {e}");
                return TargetEvent::Unreadable(e);
            }
        };
        let kib = match parse_target_kib(&value) {
            Ok(k) => k,
            Err(e) => {
                let shown: alloc::string::String = value
                    .iter()
                    .take(32)
                    .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                    .collect();
                println!("balloon: ignoring {TARGET_NODE} \"{shown}\" ({e:?})");
                return TargetEvent::Ignored(e);
            }
        };
        let pages = kib_to_pages(kib);
        let before = status().map_or_else(|| mm::info().map_or(0, |i| i.nr_pages), |s| s.current);
        let outcome = set_target(pages);
        match &outcome {
            Ok(st) if st.current != before => {
                println!("balloon: target {kib} KiB: {before} -> {} pages ({} out)", st.current, st.ballooned)
            }
            Ok(_) => {}
            Err(s) => println!(
                "balloon: target {kib} KiB: stopped at {} pages ({}), from {before}",
                s.status.current, s.err
            ),
        }
        TargetEvent::Followed { kib, before, outcome }
    }

    /// Applies `balloon=<pages>` from the kernel command line, if present: `None` without
    /// the option, the outcome otherwise (a malformed value is `EINVAL`).
    pub fn apply_cmdline(cmd: &str) -> Option<Result<Status, Shortfall>> {
        cmdline::get(cmd, "balloon")?;
        Some(match cmdline::get_u64(cmd, "balloon", 0, 0, u64::MAX) {
            Ok(pages) => set_target(pages),
            Err(_) => Err(Shortfall { status: status().unwrap_or_default(), err: Errno::EINVAL }),
        })
    }
}

#[cfg(not(test))]
pub use kernel::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steps_towards_the_target_in_batches() {
        let mut b = Balloon::new(8192, 1024).unwrap();
        assert_eq!(b.next_step(8192), Step::Done);
        assert_eq!(b.next_step(8000), Step::Release(192));
        assert_eq!(b.next_step(4000), Step::Release(BATCH));
        // Below the floor and above the boot size are clamped.
        assert_eq!(b.clamp(10), 1024);
        assert_eq!(b.clamp(1 << 40), 8192);
        assert_eq!(b.next_step(1 << 40), Step::Done);
        let pfns: Vec<Pfn> = (100..300).map(Pfn).collect();
        b.record_released(&pfns).unwrap();
        assert_eq!((b.current_pages(), b.ballooned()), (7992, 200));
        assert_eq!(b.next_step(8192), Step::Reclaim(200));
        assert_eq!(b.next_step(8100), Step::Reclaim(108));
        assert_eq!(b.next_step(7992), Step::Done);
    }

    #[test]
    fn target_values_are_plain_decimal_kib() {
        assert_eq!(parse_target_kib(b"32768"), Ok(32768));
        // Surrounding whitespace allowed; pages are rounded down.
        assert_eq!(parse_target_kib(b" 28675\n"), Ok(28675));
        assert_eq!(kib_to_pages(28675), 7168);
        assert_eq!(kib_to_pages(3), 0);
        assert_eq!(parse_target_kib(b"0000000000000000000000000004"), Ok(4));
        assert_eq!(parse_target_kib(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_target_kib(b"18446744073709551616"), Err(TargetError::TooLarge));
        assert_eq!(parse_target_kib(b"999999999999999999999"), Err(TargetError::TooLarge));
        assert_eq!(parse_target_kib(b""), Err(TargetError::Empty));
        assert_eq!(parse_target_kib(b" \t"), Err(TargetError::Empty));
        for bad in [&b"-1"[..], b"+5", b"0x100", b"12k", b"1 2", b"12\0", b"\xff", b"1.5"] {
            assert_eq!(parse_target_kib(bad), Err(TargetError::NotDecimal), "{bad:?}");
        }
    }

    #[test]
    fn reclaims_the_most_recent_first_and_refuses_duplicates() {
        let mut b = Balloon::new(100, 0).unwrap();
        b.record_released(&[Pfn(5), Pfn(6)]).unwrap();
        b.record_released(&[Pfn(70)]).unwrap();
        assert_eq!(b.record_released(&[Pfn(6)]), Err(BalloonError::AlreadyOut(Pfn(6))));
        assert_eq!(b.record_released(&[Pfn(7), Pfn(7)]), Err(BalloonError::AlreadyOut(Pfn(7))));
        assert_eq!(b.record_released(&[Pfn(8), Pfn(100)]), Err(BalloonError::OutOfRange(Pfn(100))));
        // All or nothing: 7 and 8 were not recorded.
        assert!(!b.is_out(Pfn(7)) && !b.is_out(Pfn(8)));
        assert_eq!(b.ballooned(), 3);
        assert_eq!(b.take_for_reclaim(2), vec![Pfn(6), Pfn(70)]);
        assert!(!b.is_out(Pfn(70)) && b.is_out(Pfn(5)));
        assert_eq!(b.take_for_reclaim(10), vec![Pfn(5)]);
        assert_eq!(b.take_for_reclaim(10), vec![]);
        assert_eq!(b.current_pages(), 100);
        assert!(!b.is_out(Pfn(1000)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Release the next step's pages (if it says release), taking pfns from a counter.
        Target(u64),
        /// Reclaim `n`, of which only the first `ok` succeed.
        PartialReclaim(u64, u64),
    }

    proptest! {
        /// Any decimal KiB figure that fits a u64 parses to itself; text made of digits,
        /// whitespace and the characters a sloppy writer might add parses exactly when it is
        /// a plain number that fits; any bytes at all give a value or an error, never a panic.
        #[test]
        fn target_parse_matches_u64(
            kib: u64,
            text in "[ \t\n0-9x+.-]{0,25}",
            junk in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            prop_assert_eq!(parse_target_kib(kib.to_string().as_bytes()), Ok(kib));
            prop_assert!(kib_to_pages(kib) * 4 <= kib && kib - kib_to_pages(kib) * 4 < 4);
            let t = text.trim_ascii();
            let want = if t.is_empty() {
                Err(TargetError::Empty)
            } else if !t.bytes().all(|b| b.is_ascii_digit()) {
                Err(TargetError::NotDecimal)
            } else {
                u64::try_from(t.parse::<u128>().unwrap()).map_err(|_| TargetError::TooLarge)
            };
            prop_assert_eq!(parse_target_kib(text.as_bytes()), want);
            let _ = parse_target_kib(&junk);
        }

        /// Driving the bookkeeping like the kernel part does: the page count is conserved, the
        /// bitmap matches the list, and following the steps always reaches the clamped target.
        #[test]
        fn converges_and_conserves(
            nr in 1u64..3000,
            floor in 0u64..3000,
            ops in proptest::collection::vec(prop_oneof![
                (0u64..4000).prop_map(Op::Target),
                (0u64..600, 0u64..600).prop_map(|(n, ok)| Op::PartialReclaim(n, ok)),
            ], 0..40),
        ) {
            let mut b = Balloon::new(nr, floor).unwrap();
            // Free pfns the "allocator" hands out, lowest first.
            let mut free: std::collections::BTreeSet<u64> = (0..nr).collect();
            for op in ops {
                match op {
                    Op::Target(t) => {
                        let mut guard = 0;
                        loop {
                            guard += 1;
                            prop_assert!(guard < 100, "no convergence");
                            match b.next_step(t) {
                                Step::Done => break,
                                Step::Release(n) => {
                                    prop_assert!(n <= BATCH && n > 0);
                                    let pfns: Vec<Pfn> = free.iter().take(n as usize).map(|&p| Pfn(p)).collect();
                                    prop_assert_eq!(pfns.len() as u64, n);
                                    for p in &pfns { free.remove(&p.0); }
                                    b.record_released(&pfns).unwrap();
                                }
                                Step::Reclaim(n) => {
                                    prop_assert!(n <= BATCH && n > 0);
                                    for p in b.take_for_reclaim(n) { free.insert(p.0); }
                                }
                            }
                        }
                        prop_assert_eq!(b.current_pages(), b.clamp(t));
                    }
                    Op::PartialReclaim(n, ok) => {
                        let taken = b.take_for_reclaim(n);
                        let ok = (ok as usize).min(taken.len());
                        for p in &taken[..ok] { free.insert(p.0); }
                        b.record_released(&taken[ok..]).unwrap();
                    }
                }
                prop_assert_eq!(b.current_pages() + b.ballooned(), nr);
                prop_assert_eq!(free.len() as u64, b.current_pages());
                for p in 0..nr {
                    prop_assert_eq!(b.is_out(Pfn(p)), !free.contains(&p));
                }
            }
        }
    }
}
