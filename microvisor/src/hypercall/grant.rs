//! `grant_table_op(cmd, uop, count)`: the guest side of grant tables (see [`crate::grant`]).
//!
//! Batched commands (map, unmap, copy) copy each operation in, act on it and write its status
//! back (the whole operation for map, only `status` for unmap and copy, as Xen does); the
//! hypercall itself fails only when the array is unreadable (`-EFAULT`) or the command is
//! unknown. Long batches continue themselves the way Xen encodes it: the same command with
//! the array pointer advanced and `count` reduced by the operations done.

use super::Hc;
use crate::grant::{usable, GrantCtx};
use crate::guest_mem::elem_addr;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use hypercall_abi::grant_table::{
    gntst, op, GnttabCopy, GnttabGetStatusFrames, GnttabGetVersion, GnttabMapGrantRef, GnttabQuerySize,
    GnttabSetVersion, GnttabSetupTable, GnttabUnmapAndReplace, GnttabUnmapGrantRef,
};
use hypercall_abi::xen::resolve_domid;
use hypercall_abi::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Low bits of `cmd` that hold the command; the rest is Xen's continuation argument, which
/// only `GNTTABOP_cache_flush` may carry.
pub const CMD_MASK: u32 = (1 << 12) - 1;
/// Map or unmap operations handled per invocation before continuing.
pub const MAP_BATCH: u32 = 128;
/// Copies (up to a page each) handled per invocation before continuing.
pub const COPY_BATCH: u32 = 64;

pub fn grant_table_op<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5]) -> Hc {
    let (cmd, uop, count) = (a[0] as u32, a[1], a[2] as u32);
    if (count as i32) < 0 {
        return Hc::Ret(Errno::EINVAL.to_ret());
    }
    let opaque = cmd & !CMD_MASK;
    let cmd = cmd & CMD_MASK;
    if cmd != op::CACHE_FLUSH && opaque != 0 {
        return Hc::Ret(Errno::EINVAL.to_ret());
    }
    match cmd {
        op::MAP_GRANT_REF => batch(hv, cmd, uop, count, MAP_BATCH, None, |hv, m: &mut GnttabMapGrantRef| {
            let me = hv.current().domid;
            let l4 = Some(hv.cur_vcpu().current_l4()).filter(|l4| l4.0 != 0);
            let mem = hv.plat.mem();
            let flush =
                GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem }.map_grant_ref(me, l4, m);
            hv.request_flush(flush);
        }),
        op::UNMAP_GRANT_REF => {
            let status = Some(core::mem::offset_of!(GnttabUnmapGrantRef, status));
            batch(hv, cmd, uop, count, MAP_BATCH, status, |hv, u: &mut GnttabUnmapGrantRef| {
                let me = hv.current().domid;
                let mem = hv.plat.mem();
                let done =
                    GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem }.unmap_grant_ref(me, u);
                hv.request_flush(done.flush);
                // The last mapping of a destroyed granter's frame lets it go.
                if let Some(g) = done.granter.filter(|&g| g != me) {
                    crate::domain_lifecycle::reap_if_dead(hv, g);
                }
            })
        }
        op::COPY => {
            let status = Some(core::mem::offset_of!(GnttabCopy, status));
            batch(hv, cmd, uop, count, COPY_BATCH, status, |hv, c: &mut GnttabCopy| {
                let me = hv.current().domid;
                let mem = hv.plat.mem();
                GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem }.copy(me, c);
            })
        }
        op::UNMAP_AND_REPLACE => {
            let status = Some(core::mem::offset_of!(GnttabUnmapAndReplace, status));
            batch(hv, cmd, uop, count, MAP_BATCH, status, |hv, u: &mut GnttabUnmapAndReplace| {
                let me = hv.current().domid;
                let l4 = Some(hv.cur_vcpu().current_l4()).filter(|l4| l4.0 != 0);
                let mem = hv.plat.mem();
                let done = GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem }
                    .unmap_and_replace(me, l4, u);
                hv.request_flush(done.flush);
                if let Some(g) = done.granter.filter(|&g| g != me) {
                    crate::domain_lifecycle::reap_if_dead(hv, g);
                }
            })
        }
        op::SETUP_TABLE => setup_table(hv, uop, count).into(),
        op::QUERY_SIZE => query_size(hv, uop, count).into(),
        // get_status_frames takes exactly one; set_version and get_version ignore the count
        // and do one, as Xen 4.17's do_grant_table_op.
        op::GET_STATUS_FRAMES if count != 1 => Hc::Ret(Errno::EINVAL.to_ret()),
        op::SET_VERSION => set_version(hv, uop).into(),
        op::GET_VERSION => get_version(hv, uop).into(),
        op::GET_STATUS_FRAMES => get_status_frames(hv, uop).into(),
        // Not provided: transfer (page flipping), swap_grant_ref, cache_flush (Arm).
        _ => Hc::Ret(Errno::ENOSYS.to_ret()),
    }
}

/// Runs `one` on up to `budget` operations of type `T` at `uop`, writing each back whole (or
/// only the `i16` status at `status_at`), and continues if more remain.
fn batch<P: Platform, T: FromBytes + IntoBytes + Immutable>(
    hv: &mut Hypervisor<P>,
    cmd: u32,
    uop: u64,
    count: u32,
    budget: u32,
    status_at: Option<usize>,
    mut one: impl FnMut(&mut Hypervisor<P>, &mut T),
) -> Hc {
    // Xen's guest_handle_okay on the whole array before starting.
    if count > 0 && elem_addr::<T>(uop, u64::from(count) - 1).is_err() {
        return Hc::Ret(Errno::EFAULT.to_ret());
    }
    let n = count.min(budget);
    for i in 0..u64::from(n) {
        let mut op: T = match hv.guest().read_elem(uop, i) {
            Ok(o) => o,
            Err(e) => return Hc::Ret(e.to_ret()),
        };
        one(hv, &mut op);
        let written = match (elem_addr::<T>(uop, i), status_at) {
            (Ok(at), None) => hv.guest().write_obj(at, &op),
            (Ok(at), Some(off)) => match at.checked_add(off as u64) {
                Some(at) => hv.guest().write(at, &op.as_bytes()[off..off + 2]),
                None => Err(Errno::EFAULT),
            },
            (Err(e), _) => Err(e),
        };
        if let Err(e) = written {
            return Hc::Ret(e.to_ret());
        }
        if hv.halting() {
            return Hc::Ret(0);
        }
    }
    if n < count {
        let next = uop.wrapping_add(u64::from(n) * core::mem::size_of::<T>() as u64);
        return Hc::Continue([u64::from(cmd), next, u64::from(count - n), 0, 0]);
    }
    Hc::Ret(0)
}

/// `GNTTABOP_setup_table`: grows the named domain's table to `nr_frames` and lists its frames
/// (the caller then maps them itself).
fn setup_table<P: Platform>(hv: &mut Hypervisor<P>, uop: u64, count: u32) -> Result<i64, Errno> {
    if count != 1 {
        return Err(Errno::EINVAL);
    }
    let mut st: GnttabSetupTable = hv.guest().read_obj(uop)?;
    if st.nr_frames > 0 {
        elem_addr::<u64>(st.frame_list, u64::from(st.nr_frames) - 1)?;
    }
    let me = hv.current().domid;
    let d = resolve_domid(st.dom, me);
    st.status = if !d.is_real() || !usable(&hv.domains, d) {
        gntst::BAD_DOMAIN
    } else if d != me && !hv.cur_dom().privileged {
        gntst::PERMISSION_DENIED
    } else {
        let mem = hv.plat.mem();
        let dom = hv.domains.get_mut(&d).expect("checked usable");
        let table = &mut dom.grant;
        if st.nr_frames > table.max_frames()
            || table.grow(&mut hv.frames, mem, d, st.nr_frames, &mut dom.hv_mem).is_err()
        {
            gntst::GENERAL_ERROR
        } else {
            let mut status = gntst::OKAY;
            for i in 0..st.nr_frames as usize {
                let mfn = hv.domains[&d].grant.frames()[i];
                if hv.guest().write_elem(st.frame_list, i as u64, &mfn.0).is_err() {
                    status = gntst::BAD_VIRT_ADDR;
                }
            }
            status
        }
    };
    let at = uop.checked_add(core::mem::offset_of!(GnttabSetupTable, status) as u64).ok_or(Errno::EFAULT)?;
    hv.guest().write_obj(at, &st.status)?;
    Ok(0)
}

/// `GNTTABOP_query_size`: current and maximum table frames.
fn query_size<P: Platform>(hv: &mut Hypervisor<P>, uop: u64, count: u32) -> Result<i64, Errno> {
    if count != 1 {
        return Err(Errno::EINVAL);
    }
    let mut q: GnttabQuerySize = hv.guest().read_obj(uop)?;
    let me = hv.current().domid;
    let d = resolve_domid(q.dom, me);
    q.status = if !d.is_real() || !usable(&hv.domains, d) {
        gntst::BAD_DOMAIN
    } else if d != me && !hv.cur_dom().privileged {
        gntst::PERMISSION_DENIED
    } else {
        let t = &hv.domains[&d].grant;
        q.nr_frames = t.nr_frames();
        q.max_nr_frames = t.max_frames();
        gntst::OKAY
    };
    hv.guest().write_obj(uop, &q)?;
    Ok(0)
}

/// `GNTTABOP_set_version`: only v1 exists here, so asking for v2 fails as on a Xen booted
/// with `gnttab=max-ver:1`, and the guest stays on v1.
fn set_version<P: Platform>(hv: &mut Hypervisor<P>, uop: u64) -> Result<i64, Errno> {
    let mut v: GnttabSetVersion = hv.guest().read_obj(uop)?;
    let r = match v.version {
        1 => Ok(0),
        2 => Err(Errno::ENOSYS),
        _ => Err(Errno::EINVAL),
    };
    v.version = 1;
    hv.guest().write_obj(uop, &v)?;
    r
}

/// `GNTTABOP_get_status_frames`, as Xen 4.17: status frames exist only for v2 tables, and
/// every table here is v1, so asking for any is `GNTST_general_error` (and for none, okay).
fn get_status_frames<P: Platform>(hv: &mut Hypervisor<P>, uop: u64) -> Result<i64, Errno> {
    let mut g: GnttabGetStatusFrames = hv.guest().read_obj(uop)?;
    let me = hv.current().domid;
    let d = resolve_domid(g.dom, me);
    g.status = if !d.is_real() || !usable(&hv.domains, d) {
        gntst::BAD_DOMAIN
    } else if d != me && !hv.cur_dom().privileged {
        gntst::PERMISSION_DENIED
    } else if g.nr_frames > 0 {
        gntst::GENERAL_ERROR
    } else {
        gntst::OKAY
    };
    let at =
        uop.checked_add(core::mem::offset_of!(GnttabGetStatusFrames, status) as u64).ok_or(Errno::EFAULT)?;
    hv.guest().write_obj(at, &g.status)?;
    Ok(0)
}

/// `GNTTABOP_get_version`.
fn get_version<P: Platform>(hv: &mut Hypervisor<P>, uop: u64) -> Result<i64, Errno> {
    let mut v: GnttabGetVersion = hv.guest().read_obj(uop)?;
    let me = hv.current().domid;
    let d = resolve_domid(v.dom, me);
    if !d.is_real() || !hv.domains.contains_key(&d) {
        return Err(Errno::ESRCH);
    }
    if d != me && !hv.cur_dom().privileged {
        return Err(Errno::EPERM);
    }
    v.version = 1;
    let at = uop.checked_add(core::mem::offset_of!(GnttabGetVersion, version) as u64).ok_or(Errno::EFAULT)?;
    hv.guest().write_obj(at, &v.version)?;
    Ok(0)
}
