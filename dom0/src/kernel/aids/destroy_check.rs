//! dom0's memory-accounting check of domain destruction (`destroy-check=1` on its command
//! line): every frame a domU held must be free again once dom0 has destroyed it.
//!
//! As a service it hears of each domU the toolstack is about to destroy
//! ([`Service::domain_gone`], after the domain shut down): it records the hypervisor's
//! free-frame count and the domU's frames (debug hypercall) plus the pages the hypervisor
//! lent it — its shared_info page and its grant-table frames (`GNTTABOP_query_size`), which
//! Xen also allocates from its own heap. When dom0 stops serving ([`Service::report`]) it
//! reads the free count again: it must have risen by exactly the sum. dom0 itself neither
//! allocates nor frees hypervisor frames meanwhile. Reports `TEST destroy PASS|FAIL ...`.

use crate::services::Service;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::grant_table::GnttabQuerySize;
use hypercall_abi::hypercall::debug;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::{cmdline, hypercall, println};

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

/// The number of grant-table frames of `d` (0 if the hypervisor will not say).
fn grant_frames(d: DomId) -> i64 {
    let mut q = GnttabQuerySize { dom: d, ..Default::default() };
    let r = hypercall::grant_table_op(core::slice::from_mut(&mut q));
    if r.is_err() || q.status != 0 {
        println!("dom0: destroy-check: query_size of d{}: {r:?}, status {}", d.0, q.status);
        return 0;
    }
    i64::from(q.nr_frames)
}

/// The check: the domUs sampled before their destruction.
pub struct DestroyCheck {
    samples: Vec<Sample>,
}

impl DestroyCheck {
    /// The check, if `destroy-check` is set.
    pub fn new(cmd: &str) -> Option<DestroyCheck> {
        cmdline::flag(cmd, "destroy-check").then(|| DestroyCheck { samples: Vec::new() })
    }
}

impl Service for DestroyCheck {
    fn name(&self) -> &'static str {
        "destroy-check"
    }

    fn domain_gone(&mut self, d: DomId) {
        if self.samples.iter().any(|s| s.domid == d) {
            return;
        }
        let grant_frames = grant_frames(d);
        let free = hypercall::debug_op(debug::FREE_FRAMES, 0);
        let frames = hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(d.0));
        self.samples.push(Sample { domid: d, free, frames, grant_frames });
    }

    fn poll(&mut self, _fired: &[Port]) -> bool {
        false
    }

    /// After every domU has been destroyed: the free count must have risen by what they held.
    fn report(&self) -> Option<String> {
        Some(verdict(&self.samples))
    }
}

/// The `TEST destroy` line for `samples`, now.
fn verdict(samples: &[Sample]) -> String {
    let free_after = hypercall::debug_op(debug::FREE_FRAMES, 0);
    let Some(first) = samples.first() else {
        return String::from("TEST destroy FAIL no domU was seen shut down");
    };
    let mut want = first.free;
    let mut what = String::new();
    let mut why = None;
    for s in samples {
        // Per domain: the frames it held besides shared_info, and its grant-table frames.
        what.push_str(&alloc::format!(
            "d{d}_frames={} d{d}_grant_frames={} ",
            s.frames,
            s.grant_frames,
            d = s.domid.0
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
    // The figures as `key=value` fields, which the host tests read (xtask::kv).
    let figures = alloc::format!("{what}free_before={} free_after={free_after} want={want}", first.free);
    if free_after != want {
        why = why.or(Some(alloc::format!("free count off by {}", free_after - want)));
    }
    match why {
        None => alloc::format!("TEST destroy PASS {figures}"),
        Some(w) => alloc::format!("TEST destroy FAIL {figures}: {w}"),
    }
}
