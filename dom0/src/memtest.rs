//! dom0's memory-accounting check of domain destruction (`destroy-check=1` on its command
//! line): every frame a domU held must be free again once dom0 has destroyed it.
//!
//! The control plane destroys a domU as soon as it sees it shut down, so the check samples
//! around it rather than doing the destroy itself: when a domU is found shut down (at start,
//! [`init`], or on VIRQ_DOM_EXC, [`on_dom_exc`], which runs before the control plane reacts)
//! it records the hypervisor's free-frame count and the domU's frames (debug hypercall) plus
//! the pages the hypervisor lent it — its shared_info page and its grant-table frames
//! (`GNTTABOP_query_size`), which Xen also allocates from its own heap. After the control
//! plane has destroyed every domU, [`finish`] reads the free count again: it must have risen
//! by exactly the sum. dom0 itself neither allocates nor frees hypervisor frames meanwhile.
//! Prints `TEST destroy PASS|FAIL ...` for the host test.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::domctl::{cmd, dominf, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::grant_table::{op as gntop, GnttabQuerySize};
use hypercall_abi::hypercall::{debug, nr};
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::{cmdline, events, hypercall, println};
use spin::Mutex;

/// First domain id that is not a real domain.
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// A domU seen shut down, before its destruction.
#[derive(Clone, Copy, Debug)]
struct Sample {
    domid: DomId,
    /// Free frames when it was sampled.
    free: i64,
    /// Frames it owned.
    frames: i64,
    /// Its grant-table frames.
    grant_frames: i64,
}

/// Samples, in the order taken. Locked by the upcall handler too: main-path users mask
/// upcalls first.
static SAMPLES: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

/// The first domain with an id of at least `from`, as `getdomaininfo` reports it.
fn next_domain(from: u16) -> Option<XenDomctlGetdomaininfo> {
    let mut op = XenDomctl::new(cmd::GETDOMAININFO, DomId(from));
    hypercall::check(hypercall::domctl(&mut op)).ok()?;
    let info: XenDomctlGetdomaininfo = op.payload();
    (info.domain.0 >= from && info.domain.0 < DOMID_FIRST_RESERVED).then_some(info)
}

/// The number of grant-table frames of `d` (0 if the hypervisor will not say).
fn grant_frames(d: DomId) -> i64 {
    let mut q = GnttabQuerySize { dom: d, ..Default::default() };
    let r = hypercall::hypercall5(
        nr::GRANT_TABLE_OP,
        u64::from(gntop::QUERY_SIZE),
        hypercall::ptr_mut(&mut q),
        1,
        0,
        0,
    );
    if r != 0 || q.status != 0 {
        println!("dom0: destroy-check: query_size of d{}: {r}, status {}", d.0, q.status);
        return 0;
    }
    i64::from(q.nr_frames)
}

/// Records every shut-down domU not sampled yet.
fn sample_new() {
    let mut samples = SAMPLES.lock();
    let mut next = 1u16;
    while let Some(info) = next_domain(next) {
        next = info.domain.0 + 1;
        let d = info.domain;
        if info.flags & dominf::SHUTDOWN == 0 || samples.iter().any(|s| s.domid == d) {
            continue;
        }
        let grant_frames = grant_frames(d);
        let free = hypercall::debug_op(debug::FREE_FRAMES, 0);
        let frames = hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(d.0));
        samples.push(Sample { domid: d, free, frames, grant_frames });
    }
}

/// Turns the check on if `destroy-check` is set and samples the domUs already shut down.
/// Call before the control plane starts (it destroys those at once).
pub fn init(cmdline_text: &str) {
    if cmdline::flag(cmdline_text, "destroy-check") {
        ENABLED.store(true, Ordering::SeqCst);
        let _g = events::mask_upcalls();
        sample_new();
    }
}

/// VIRQ_DOM_EXC: a domU changed state. Call before the control plane's own handler.
pub fn on_dom_exc() {
    if ENABLED.load(Ordering::SeqCst) {
        sample_new();
    }
}

/// After every domU has been destroyed: the free count must have risen by what they held.
pub fn finish() {
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let samples: Vec<Sample> = {
        let _g = events::mask_upcalls();
        SAMPLES.lock().clone()
    };
    let free_after = hypercall::debug_op(debug::FREE_FRAMES, 0);
    let Some(first) = samples.first() else {
        println!("TEST destroy FAIL no domU was seen shut down");
        return;
    };
    let mut want = first.free;
    let mut what = alloc::string::String::new();
    let mut why = None;
    for s in &samples {
        what.push_str(&alloc::format!(
            "d{}: {} frames + shared_info + {} grant frame(s); ",
            s.domid.0,
            s.frames,
            s.grant_frames
        ));
        if s.frames < 0 || s.free < 0 {
            why = Some(alloc::format!("d{} sampled after its destruction ({})", s.domid.0, s.frames));
        }
        want += s.frames + 1 + s.grant_frames;
        let left = hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(s.domid.0));
        if left != Errno::ESRCH.to_ret() {
            why =
                why.or(Some(alloc::format!("the hypervisor still counts {left} frames for d{}", s.domid.0)));
        }
    }
    let figures = alloc::format!(
        "{what}free {} -> {free_after} (+{}), want {want}",
        first.free,
        free_after - first.free
    );
    if free_after != want {
        why = why.or(Some(alloc::format!("free count off by {}", free_after - want)));
    }
    match why {
        None => println!("TEST destroy PASS {figures}"),
        Some(w) => println!("TEST destroy FAIL {figures}: {w}"),
    }
}
