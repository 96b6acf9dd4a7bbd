//! Builds the boot domains (dom0-less style) from the Multiboot boot modules: the first module is
//! dom0, the others are domUs. Each domU gets its console and xenstore event channels
//! pre-allocated with dom0 as the remote end, as Xen's toolstack does before handing a
//! domain to xenstored and the console daemon (see `Hypervisor::create_domain`).

use crate::arch::x86_64::bootmem::{self, BootInfo};
use crate::machine::Hv;
use hypercall_abi::Mfn;
use microvisor::domain_build::DomainSpec;

/// Builds every module's domain; a module that cannot be built is reported and skipped,
/// except dom0, without which the machine cannot run.
pub fn build_all(hv: &mut Hv, bi: &BootInfo) {
    if bi.modules.is_empty() {
        hv.log(format_args!("no boot modules: nothing to run"));
        crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
    }
    for (i, m) in bi.modules.iter().enumerate() {
        let default_name = if i == 0 { "dom0".into() } else { alloc::format!("domU{i}") };
        let result = microvisor::bootcfg::parse(m.cmdline.as_str(), &default_name).and_then(|cfg| {
            let spec = DomainSpec {
                name: &cfg.name,
                is_dom0: i == 0,
                mem_bytes: cfg.mem_bytes,
                vcpus: cfg.vcpus,
                cmdline: &cfg.guest_cmdline,
            };
            // Modules stay reserved until every domain is built (below).
            bootmem::with_module_bytes(m, |bytes| hv.create_domain(&spec, bytes)).map(|id| (id, cfg))
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
