//! Builds the boot domains (dom0-less style) from the Multiboot modules: the first module is
//! dom0, the others are domUs. Each domU gets its console and xenstore event channels
//! pre-allocated with dom0 as the remote end, as Xen's toolstack does before handing a
//! domain to xenstored and the console daemon (see `Hypervisor::create_domain`).

use crate::arch::x86_64::bootmem::{self, BootInfo};
use crate::arch::x86_64::ioapic::IOAPIC_PHYS;
use crate::machine::Hv;
use core::sync::atomic::{AtomicU32, Ordering};
use hypercall_abi::{DomId, Mfn};
use microvisor::domain_build::DomainSpec;
use microvisor::mm::frame_table::{FrameTable, Owner};

/// Physical address width of the CPU (CPUID 0x80000008).
static PHYS_ADDR_BITS: AtomicU32 = AtomicU32::new(36);

/// Records the CPU's physical address width for [`iomem_policy`].
pub fn set_phys_addr_bits(bits: u32) {
    PHYS_ADDR_BITS.store(bits.clamp(32, 52), Ordering::Relaxed);
}

/// Which device frames a domain with I/O access (dom0) may map: non-RAM frames below the
/// CPU's physical address width (XSA-173), never RAM, hypervisor frames, or the interrupt
/// controllers, which stay the hypervisor's.
pub fn iomem_policy(ft: &FrameTable, d: DomId, mfn: Mfn) -> bool {
    if !ft.domain(d).is_some_and(|m| m.iomem) {
        return false;
    }
    let lapic = crate::arch::x86_64::cpu::rdmsr(crate::arch::x86_64::cpu::msr::APIC_BASE) & !0xfff;
    if mfn.addr() == lapic || mfn.addr() == IOAPIC_PHYS {
        return false;
    }
    match ft.owner(mfn) {
        Some(Owner::Io) => true,
        Some(_) => false,
        None => mfn.0 < 1u64 << (PHYS_ADDR_BITS.load(Ordering::Relaxed) - 12),
    }
}

/// Builds every module's domain; a module that cannot be built is reported and skipped,
/// except dom0, without which the machine cannot run.
pub fn build_all(hv: &mut Hv, bi: &BootInfo) {
    if bi.modules.is_empty() {
        hv.log(format_args!("no boot modules: nothing to run"));
        crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
    }
    for (i, m) in bi.modules.iter().enumerate() {
        let default_name = if i == 0 { "dom0".into() } else { alloc::format!("domU{i}") };
        // SAFETY: modules stay reserved (out of the frame table's free pool) until this loop
        // is over.
        let bytes = unsafe { bootmem::module_bytes(m) };
        let result = microvisor::bootcfg::parse(m.cmdline.as_str(), &default_name).and_then(|cfg| {
            let spec = DomainSpec {
                name: &cfg.name,
                is_dom0: i == 0,
                mem_bytes: cfg.mem_bytes,
                vcpus: cfg.vcpus,
                cmdline: &cfg.guest_cmdline,
            };
            hv.create_domain(&spec, bytes).map(|id| (id, cfg))
        });
        match result {
            Ok((id, cfg)) => {
                let free = hv.nr_free_frames();
                hv.log(format_args!(
                    "d{} ({}): {} MiB, {} frames free",
                    id.0,
                    cfg.name,
                    cfg.mem_bytes >> 20,
                    free
                ));
            }
            Err(e) => {
                hv.log(format_args!("module {i} ({}): {e}", m.cmdline));
                if i == 0 {
                    hv.log(format_args!("cannot run without dom0"));
                    crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
                }
            }
        }
    }
    for m in &bi.modules {
        hv.release_to_free(Mfn(m.range.start >> 12), Mfn(m.range.end >> 12));
    }
}
