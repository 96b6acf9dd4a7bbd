//! The small hypercalls of a PV vCPU's life: traps and callbacks, the kernel stack, segment
//! bases, FPU task switching, `vm_assist`, `xen_version`, `console_io` and the debug op.

use super::Hc;
use crate::hv::Hypervisor;
use crate::platform::Platform;
use crate::version;
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister, CallbackUnregister};
#[cfg(feature = "test-aids")]
use hypercall_abi::hypercall::debug;
use hypercall_abi::version::{op as xenver, XenFeatureInfo, XenPlatformParameters};
use hypercall_abi::xen::{consoleio, is_canonical, segbase, vmasst, TrapInfo, HYPERVISOR_VIRT_START};
use hypercall_abi::Errno;

pub fn set_trap_table<P: Platform>(hv: &mut Hypervisor<P>, table: u64) -> Result<i64, Errno> {
    if table == 0 {
        hv.cur_vcpu_mut().traps = [TrapInfo::default(); 256];
        return Ok(0);
    }
    // Copy and validate the whole table before changing anything.
    let mut new = hv.cur_vcpu().traps;
    for i in 0..256u64 {
        let t: TrapInfo = hv.guest().read_elem(table, i)?;
        if t.address == 0 {
            break;
        }
        // Xen checks only that the handler is canonical; the selector gets RPL 3 (bounces
        // always enter on the flat kernel selector).
        if !is_canonical(t.address) {
            return Err(Errno::EINVAL);
        }
        new[t.vector as usize] = TrapInfo { cs: t.cs | 3, ..t };
    }
    hv.cur_vcpu_mut().traps = new;
    Ok(0)
}

/// `stack_switch(ss, sp)`: as Xen 4.17 (`do_stack_switch`), any selector is accepted with its
/// RPL raised to the guest kernel's (3), and the call always succeeds. A 64-bit PV bounce
/// frame always uses the flat kernel stack segment, so `ss` is only recorded: Linux passes its
/// own `__KERNEL_DS` (0x18) from `xen_load_sp0` and fails its boot-time multicall otherwise.
pub fn stack_switch<P: Platform>(hv: &mut Hypervisor<P>, ss: u64, sp: u64) -> Result<i64, Errno> {
    let ss = (ss as u16) | 3;
    let v = hv.cur_vcpu_mut();
    v.kernel_ss = ss;
    v.kernel_sp = sp;
    Ok(0)
}

pub fn set_callbacks<P: Platform>(
    hv: &mut Hypervisor<P>,
    event: u64,
    failsafe: u64,
    syscall: u64,
) -> Result<i64, Errno> {
    // As Xen's do_set_callbacks: each address goes through register_guest_callback, which
    // refuses a non-canonical one (that callback keeps its old address), and the call always
    // succeeds.
    let cb = &mut hv.cur_vcpu_mut().callbacks;
    for (slot, a) in [(&mut cb.event, event), (&mut cb.failsafe, failsafe), (&mut cb.syscall, syscall)] {
        if is_canonical(a) {
            *slot = a;
        }
    }
    Ok(0)
}

pub fn callback_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    match cmd as u32 {
        cbop::REGISTER => {
            let r: CallbackRegister = hv.guest().read_obj(arg)?;
            // Xen's register_guest_callback, before it looks at the type (found by the fuzzer,
            // seed 103: a non-canonical handler was accepted and crashed the domain at its
            // first use).
            if !is_canonical(r.address) {
                return Err(Errno::EINVAL);
            }
            let mask = r.flags & callbackf::MASK_EVENTS != 0;
            let cb = &mut hv.cur_vcpu_mut().callbacks;
            match r.type_ {
                callback_type::EVENT => cb.event = r.address,
                callback_type::FAILSAFE => {
                    cb.failsafe = r.address;
                    cb.failsafe_masks_events = mask;
                }
                callback_type::SYSCALL => {
                    cb.syscall = r.address;
                    cb.syscall_masks_events = mask;
                }
                callback_type::SYSCALL32 => cb.syscall32 = r.address,
                callback_type::SYSENTER => cb.sysenter = r.address,
                callback_type::NMI => cb.nmi = r.address,
                _ => return Err(Errno::ENOSYS),
            }
            Ok(0)
        }
        cbop::UNREGISTER => {
            let u: CallbackUnregister = hv.guest().read_obj(arg)?;
            let cb = &mut hv.cur_vcpu_mut().callbacks;
            match u.type_ {
                // Xen lets only the NMI callback be unregistered.
                callback_type::EVENT
                | callback_type::FAILSAFE
                | callback_type::SYSCALL
                | callback_type::SYSCALL32
                | callback_type::SYSENTER => return Err(Errno::EINVAL),
                callback_type::NMI => cb.nmi = 0,
                _ => return Err(Errno::ENOSYS),
            }
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

pub fn fpu_taskswitch<P: Platform>(hv: &mut Hypervisor<P>, set: u64) -> Result<i64, Errno> {
    hv.cur_vcpu_mut().fpu_ts = set != 0;
    hv.mark_hw_dirty();
    Ok(0)
}

pub fn set_segment_base<P: Platform>(hv: &mut Hypervisor<P>, which: u64, base: u64) -> Result<i64, Errno> {
    // From the CPU first: a base the guest zeroed by loading a null selector must be written
    // again even when the value is the one the hypervisor last gave (Xen always writes).
    hv.refresh_segment_bases(hv.current());
    hv.bases_changed();
    let v = hv.cur_vcpu_mut();
    match which as u32 {
        segbase::FS | segbase::GS_USER | segbase::GS_KERNEL if !is_canonical(base) => Err(Errno::EINVAL),
        segbase::FS => {
            v.fs_base = base;
            Ok(0)
        }
        segbase::GS_USER => {
            v.gs_base_user = base;
            Ok(0)
        }
        segbase::GS_KERNEL => {
            v.gs_base_kernel = base;
            Ok(0)
        }
        // As Xen: the user %gs is reloaded from the selector (RPL raised to 3) and its base
        // read from the descriptor; a selector that does not load leaves a null %gs. It never
        // fails (Linux's `xen_load_gs_index` BUG()s if it does, as for its `__USER_DS`, 0x2b).
        segbase::GS_USER_SEL => {
            v.gs_base_user = user_selector_base(&v.gdt, base as u16);
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

/// The base a data-segment load of `sel` gives in long mode: the descriptor's 32-bit base for
/// a present GDT entry, 0 for a null selector, an LDT selector or one the GDT does not hold
/// (Xen's reserved flat selectors included, whose base is 0).
fn user_selector_base(gdt: &[u64], sel: u16) -> u64 {
    use crate::x86::seg::{PRESENT, TI_LDT};
    if sel & TI_LDT != 0 {
        return 0;
    }
    match gdt.get(usize::from(sel >> 3)) {
        Some(&d) if sel >> 3 != 0 && d & PRESENT != 0 => ((d >> 16) & 0xff_ffff) | ((d >> 56) << 24),
        _ => 0,
    }
}

pub fn vm_assist<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, ty: u64) -> Result<i64, Errno> {
    // Writable page tables are emulated once enabled (`emulate::ptwr_write`).
    if ty >= 64 || vmasst::VALID_MASK & (1 << ty) == 0 {
        return Err(Errno::EINVAL);
    }
    let d = hv.cur_dom_mut();
    match cmd as u32 {
        vmasst::CMD_ENABLE => d.vm_assist |= 1 << ty,
        vmasst::CMD_DISABLE => d.vm_assist &= !(1 << ty),
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

/// Copies a NUL-padded string into a fixed guest buffer of `N` bytes.
fn put_string<P: Platform, const N: usize>(hv: &Hypervisor<P>, arg: u64, s: &str) -> Result<i64, Errno> {
    let mut buf = [0u8; N];
    let n = s.len().min(N - 1);
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
    hv.guest().write(arg, &buf)?;
    Ok(0)
}

/// `xen_version(cmd, arg)`. The two commands kernels issue at run time are answered inline (a multicall of
/// `XENVER_version` calls, `get_features`); the rest, with their string buffers, out of line.
#[inline(always)]
pub fn xen_version<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    match cmd as u32 {
        xenver::VERSION => Ok(i64::from(version::XEN_VERSION)),
        xenver::GET_FEATURES => {
            // One address space for the copy in and out (nothing between changes it).
            let guest = hv.guest();
            let mut fi: XenFeatureInfo = guest.read_obj(arg)?;
            fi.submap = match fi.submap_idx {
                0 => crate::loader::elf::reported_features(hv.cur_dom().privileged),
                _ => 0,
            };
            guest.write_obj(arg, &fi)?;
            Ok(0)
        }
        _ => xen_version_info(hv, cmd, arg),
    }
}

/// The other `xen_version` commands.
#[inline(never)]
fn xen_version_info<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    match cmd as u32 {
        xenver::EXTRAVERSION => put_string::<P, 16>(hv, arg, version::EXTRAVERSION),
        xenver::COMPILE_INFO => {
            let mut ci = [0u8; 64 + 16 + 32 + 32];
            let fields: [(&str, usize, usize); 4] =
                [("rustc", 0, 64), ("microvisor", 64, 16), ("localdomain", 80, 32), ("2026", 112, 32)];
            for (s, off, len) in fields {
                let n = s.len().min(len - 1);
                ci[off..off + n].copy_from_slice(&s.as_bytes()[..n]);
            }
            hv.guest().write(arg, &ci)?;
            Ok(0)
        }
        xenver::CAPABILITIES => put_string::<P, 1024>(hv, arg, version::CAPABILITIES),
        xenver::CHANGESET => put_string::<P, 64>(hv, arg, "microvisor"),
        xenver::PLATFORM_PARAMETERS => {
            hv.guest().write_obj(arg, &XenPlatformParameters { virt_start: HYPERVISOR_VIRT_START })?;
            Ok(0)
        }
        xenver::PAGESIZE => Ok(4096),
        xenver::GUEST_HANDLE => {
            hv.guest().write(arg, &[0u8; 16])?;
            Ok(0)
        }
        xenver::COMMANDLINE => {
            if !hv.cur_dom().privileged {
                return Err(Errno::EPERM);
            }
            put_string::<P, 1024>(hv, arg, hv.cmdline())
        }
        xenver::BUILD_ID => Err(Errno::ENODATA),
        _ => Err(Errno::ENOSYS),
    }
}

/// Bytes of console input or output handled per call before the call continues itself (a
/// stack buffer: the common short write costs no allocation).
const CONSOLE_CHUNK: u64 = 256;

pub fn console_io<P: Platform>(hv: &mut Hypervisor<P>, a: [u64; 5]) -> Hc {
    let [cmd, count, buf, ..] = a;
    match cmd {
        consoleio::WRITE => {
            let n = count.min(CONSOLE_CHUNK);
            let mut chunk = [0u8; CONSOLE_CHUNK as usize];
            let bytes = &mut chunk[..n as usize];
            if let Err(e) = hv.guest().read(buf, bytes) {
                return Hc::Ret(e.to_ret());
            }
            let id = hv.current().domid;
            let printable_only = !hv.cur_dom().privileged;
            // The line buffer is taken out while it emits, which needs the whole hypervisor.
            let mut line = core::mem::take(&mut hv.cur_dom_mut().console);
            line.push(bytes, printable_only, |l| hv.guest_console_line(id, l));
            hv.cur_dom_mut().console = line;
            if count > n {
                Hc::Continue([cmd, count - n, buf.wrapping_add(n), a[3], a[4]])
            } else {
                Hc::Ret(0)
            }
        }
        consoleio::READ => {
            if !hv.cur_dom().privileged {
                return Hc::Ret(Errno::EPERM.to_ret());
            }
            let mut got = [0u8; CONSOLE_CHUNK as usize];
            let mut n = 0;
            while (n as u64) < count.min(CONSOLE_CHUNK) {
                match hv.plat.console_read() {
                    Some(b) => got[n] = b,
                    None => break,
                }
                n += 1;
            }
            match hv.guest().write(buf, &got[..n]) {
                Ok(()) => Hc::Ret(n as i64),
                Err(e) => Hc::Ret(e.to_ret()),
            }
        }
        _ => Hc::Ret(Errno::ENOSYS.to_ret()),
    }
}

/// microvisor's debug hypercall: frame accounting that tests and benchmarks assert on. It
/// exposes other domains' and the machine's accounting and prints on the console, so it is
/// dom0's; any domain may count its own frames (what `XENMEM_current_reservation` tells it
/// anyway). The hypervisor option `arch_debug=domu` lets domUs read the counts too (tests
/// that check the hypervisor's accounting from a domU); the console dump stays dom0's. A test
/// aid: without the `test-aids` feature the hypercall is `-ENOSYS`, as in Xen.
#[cfg(feature = "test-aids")]
pub fn debug_op<P: Platform>(hv: &mut Hypervisor<P>, cmd: u64, arg: u64) -> Result<i64, Errno> {
    let me = hv.current().domid;
    let privileged = hv.cur_dom().privileged;
    let may_read = privileged || hv.options().arch_debug_domu;
    match cmd {
        debug::DOMAIN_FRAMES => {
            let d = hypercall_abi::xen::resolve_domid(hypercall_abi::DomId(arg as u16), me);
            if d != me && !may_read {
                return Err(Errno::EPERM);
            }
            hv.frames.domain(d).map(|m| m.tot_pages as i64).ok_or(Errno::ESRCH)
        }
        debug::FREE_FRAMES if !may_read => Err(Errno::EPERM),
        debug::DUMP_MEMORY if !privileged => Err(Errno::EPERM),
        debug::FREE_FRAMES => Ok(hv.frames.nr_free() as i64),
        debug::LONGEST_MM_OP if !may_read => Err(Errno::EPERM),
        debug::LONGEST_MM_OP => Ok(hv.frames.take_longest_op() as i64),
        debug::DUMP_MEMORY => {
            hv.dump_memory();
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}
