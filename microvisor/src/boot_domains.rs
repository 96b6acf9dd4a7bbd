//! Builds the boot domains (dom0-less style) from the Multiboot modules: the first module is
//! dom0, the others are domUs. Each domU gets its console and xenstore event channels
//! pre-allocated with dom0 as the remote end, as Xen's toolstack does before handing a
//! domain to xenstored and the console daemon.

use crate::arch::x86_64::bootmem::{self, BootInfo};
use crate::arch::x86_64::paging::AddressSpace;
use crate::machine::Hv;
use hypercall_abi::xen::SharedInfo;
use hypercall_abi::{DomId, PAGE_SIZE};
use microvisor::domain::DomainConfig;
use microvisor::event::PortState;
use microvisor::loader::builder::{build_pv_domain, BuildConfig};
use microvisor::loader::elf::parse_pv_image;
use microvisor::mm::{FrameAllocator, MachineMemory};

/// Largest kernel image accepted.
const MAX_IMAGE: u64 = 256 << 20;

/// Builds every module's domain; a module that cannot be built is reported and skipped,
/// except dom0, without which the machine cannot run.
pub fn build_all(hv: &mut Hv, bi: &BootInfo, aspace: &AddressSpace) {
    if bi.modules.is_empty() {
        hv.log(format_args!("no boot modules: nothing to run"));
        crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
    }
    for (i, m) in bi.modules.iter().enumerate() {
        let default_name = if i == 0 { alloc::format!("dom0") } else { alloc::format!("domU{i}") };
        // SAFETY: modules stay reserved until this loop is over (they are never added to the
        // frame allocator during boot).
        let bytes = unsafe { bootmem::module_bytes(m) };
        match build_one(hv, i == 0, m.cmdline.as_str(), &default_name, bytes, aspace) {
            Ok(id) => hv.start_domain(id),
            Err(e) => {
                hv.log(format_args!("module {i} ({}): {e}", m.cmdline));
                if i == 0 {
                    hv.log(format_args!("cannot run without dom0"));
                    crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
                }
            }
        }
    }
    // The modules' memory is free now.
    for m in &bi.modules {
        let mut pa = m.range.start;
        while pa < m.range.end {
            hv.frames.free.push(hypercall_abi::Mfn(pa >> 12));
            pa += PAGE_SIZE as u64;
        }
    }
}

fn build_one(
    hv: &mut Hv,
    is_dom0: bool,
    cmdline: &str,
    default_name: &str,
    bytes: &[u8],
    aspace: &AddressSpace,
) -> Result<DomId, alloc::string::String> {
    use alloc::string::ToString;
    let cfg = microvisor::bootcfg::parse(cmdline, default_name)?;
    let image = parse_pv_image(bytes, MAX_IMAGE).map_err(|e| e.to_string())?;
    let id = if is_dom0 { DomId::DOM0 } else { hv.alloc_domid() };
    let nr_pages = cfg.mem_bytes / PAGE_SIZE as u64;
    let shared_info = hv.frames.alloc_frame(id).ok_or("out of memory for shared_info")?;
    let dcfg = DomainConfig {
        name: cfg.name.clone(),
        privileged: is_dom0,
        max_pages: nr_pages,
        max_vcpus: cfg.vcpus,
        max_evtchn_ports: 1024,
    };
    hv.add_domain(id, &dcfg, shared_info);
    let (store_port, console_port) = if is_dom0 {
        (hypercall_abi::Port(0), hypercall_abi::Port(0))
    } else {
        let d = hv.domains.get_mut(&id).expect("just added");
        let unbound = PortState::Unbound { remote: DomId::DOM0 };
        let store = d.evtchn.alloc(unbound, 0).map_err(|e| e.to_string())?;
        let console = d.evtchn.alloc(unbound, 0).map_err(|e| e.to_string())?;
        (store, console)
    };
    let bc = BuildConfig {
        domid: id,
        nr_pages,
        is_dom0,
        shared_info_maddr: shared_info.addr(),
        store_evtchn: store_port,
        console_evtchn: console_port,
        cmdline: cfg.guest_cmdline.as_bytes(),
        initrd: &[],
        hypervisor_l4: aspace.hv_slots,
    };
    let mem = hv.plat.mem;
    let built = match build_pv_domain(&mem, &mut hv.frames, &image, bytes, &bc) {
        Ok(b) => b,
        Err(e) => {
            hv.domains.remove(&id);
            return Err(e.to_string());
        }
    };
    for (pfn, mfn) in built.p2m.iter().enumerate() {
        mem.write_u64(aspace.m2p_base.addr() + mfn.0 * 8, pfn as u64);
    }
    // Xen starts every vCPU with event delivery masked; the guest unmasks when ready.
    for v in 0..cfg.vcpus as usize {
        mem.write_u8(shared_info.addr() + SharedInfo::vcpu_info_offset(v) as u64 + 1, 1);
    }
    let d = hv.domains.get_mut(&id).expect("just added");
    d.tot_pages = built.p2m.len() as u64;
    d.store_ring = built.store_mfn.map(|m| (m, store_port.0));
    d.console_ring = built.console_mfn.map(|m| (m, console_port.0));
    d.vcpus[0].boot(built.entry, built.stack_top, built.start_info_va, built.l4);
    let free = hv.frames.free_frames();
    hv.log(format_args!(
        "d{} ({}): {} MiB, entry {:#x}, {} page-table frames, {} frames free",
        id.0,
        cfg.name,
        cfg.mem_bytes >> 20,
        built.entry,
        built.page_tables.len(),
        free
    ));
    Ok(id)
}
