//! Builds the boot domains (dom0-less style) from the Multiboot modules: the first module is
//! dom0, the others are domUs, except modules marked `ramdisk=<name>`, which are that
//! domain's Xen ramdisk. Each domU gets its console and xenstore event channels
//! pre-allocated with dom0 as the remote end, as Xen's toolstack does before handing a
//! domain to xenstored and the console daemon (see `Hypervisor::create_domain`).

#![forbid(unsafe_code)]

use crate::arch::x86_64::bootmem::{self, BootInfo};
use crate::machine::Hv;
use hypercall_abi::Mfn;
use microvisor::domain_lifecycle::DomainSpec;

/// Builds every module's domain; a module that cannot be built is reported and skipped,
/// except dom0, without which the machine cannot run.
pub fn build_all(hv: &mut Hv, bi: &BootInfo) {
    if bi.modules.is_empty() {
        hv.log(format_args!("no boot modules: nothing to run"));
        crate::arch::x86_64::cpu::qemu_exit(microvisor::hv::exit_code::HYPERVISOR_FAULT);
    }
    // Ramdisk modules (`ramdisk=<name>`) belong to the domain of that name.
    let ramdisk_of = |m: &bootmem::BootModule| microvisor::bootcfg::ramdisk_of(m.cmdline.as_str());
    for (i, m) in bi.modules.iter().enumerate().skip(1) {
        if let Some(Err(e)) = ramdisk_of(m) {
            hv.log(format_args!("module {i}: {e}"));
        }
    }
    for (i, m) in bi.modules.iter().enumerate() {
        if i > 0 && ramdisk_of(m).is_some() {
            continue;
        }
        let default_name = if i == 0 { "dom0".into() } else { alloc::format!("domU{i}") };
        let result = microvisor::bootcfg::parse(m.cmdline.as_str(), &default_name).and_then(|cfg| {
            let ramdisk =
                bi.modules.iter().skip(1).find(|r| matches!(ramdisk_of(r), Some(Ok(n)) if n == cfg.name));
            let mut build = |bytes: &[u8], initrd: &[u8]| {
                let spec = DomainSpec {
                    name: &cfg.name,
                    is_dom0: i == 0,
                    mem_bytes: cfg.mem_bytes,
                    vcpus: cfg.vcpus,
                    cmdline: &cfg.guest_cmdline,
                    initrd,
                };
                hv.create_domain(&spec, bytes)
            };
            // Modules stay reserved until every domain is built (below).
            let id = bootmem::with_module_bytes(m, |bytes| match ramdisk {
                Some(r) => bootmem::with_module_bytes(r, |initrd| build(bytes, initrd)),
                None => build(bytes, &[]),
            })?;
            Ok((id, cfg))
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
