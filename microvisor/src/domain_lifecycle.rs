//! Creating and destroying domains: the steps around the loader's builder that make a built
//! image a live domain (frame accounting, the shared_info page, pre-allocated console and
//! xenstore ports for domUs, the grant table with the console and xenstore references seeded
//! for dom0, the M2P, pinned and validated bootstrap page tables, the boot vCPU), and tearing
//! one down so every frame returns to the free pool.

use crate::domain::{Domain, DomainConfig, DomainState};
use crate::event::{PortState, VcpuInfoRef};
use crate::grant::{GrantCtx, INITIAL_GRANT_FRAMES};
use crate::hv::Hypervisor;
use crate::loader::builder::{build_pv_domain, BuildConfig};
use crate::loader::elf::parse_pv_image;
use crate::mm::frame_table::PageType;
use crate::platform::Platform;
use alloc::string::{String, ToString};
use hypercall_abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
use hypercall_abi::xen::SharedInfo;
use hypercall_abi::{DomId, Mfn, Port, PAGE_SIZE};

/// Largest kernel image accepted.
pub const MAX_IMAGE: u64 = 256 << 20;
/// vCPUs a domain may have.
pub const MAX_VCPUS: usize = 8;
/// Ports a boot domain may allocate.
pub const MAX_EVTCHN_PORTS: u32 = 1024;

/// What a boot domain is to be.
#[derive(Clone, Debug)]
pub struct DomainSpec<'a> {
    pub name: &'a str,
    /// dom0: privileged, gets id 0, may map I/O memory.
    pub is_dom0: bool,
    pub mem_bytes: u64,
    pub vcpus: u32,
    pub cmdline: &'a str,
    /// The Xen ramdisk (`start_info.mod_start`/`mod_len`; empty: none).
    pub initrd: &'a [u8],
}

/// Builds a PV domain from a Xen ELF image and makes its boot vCPU runnable. On failure
/// nothing is left behind and the reason is a one-line message.
pub fn create_domain<P: Platform>(
    hv: &mut Hypervisor<P>,
    spec: &DomainSpec<'_>,
    image: &[u8],
) -> Result<DomId, String> {
    let parsed = parse_pv_image(image, MAX_IMAGE).map_err(|e| e.to_string())?;
    let id = if spec.is_dom0 { DomId::DOM0 } else { hv.alloc_domid() };
    if hv.domains.contains_key(&id) {
        return Err(alloc::format!("domain {} exists already", id.0));
    }
    let nr_pages = spec.mem_bytes / PAGE_SIZE as u64;
    let cfg = DomainConfig {
        name: spec.name.into(),
        privileged: spec.is_dom0,
        max_pages: nr_pages,
        max_vcpus: spec.vcpus,
        max_evtchn_ports: MAX_EVTCHN_PORTS,
    };
    // The heap this domain may ever make the hypervisor use, committed from the pool now.
    let commitment = Domain::commitment(&cfg);
    if hv.hv_mem_pool.charge(commitment).is_err() {
        return Err(alloc::format!(
            "not enough hypervisor memory for another domain ({} KiB of {} KiB committed)",
            hv.hv_mem_pool.used() >> 10,
            hv.hv_mem_pool.limit() >> 10
        ));
    }
    if let Err(e) = hv.frames.add_domain(id, nr_pages, spec.is_dom0) {
        hv.hv_mem_pool.uncharge(commitment);
        return Err(e.to_string());
    }
    let mem = hv.plat.mem();
    let Some(shared_info) = hv.frames.alloc_xen_frame(mem) else {
        let _ = hv.frames.remove_domain(id);
        hv.hv_mem_pool.uncharge(commitment);
        return Err("out of memory for shared_info".into());
    };
    hv.frames.share_xen_frame(shared_info, id, true).expect("fresh hypervisor frame can be shared");
    if spec.vcpus as usize > MAX_VCPUS || hv.sched.reserve(spec.vcpus as usize).is_err() {
        let _ = hv.frames.remove_domain(id);
        hv.hv_mem_pool.uncharge(commitment);
        return Err(alloc::format!("cannot run {} vCPUs (at most {MAX_VCPUS})", spec.vcpus));
    }
    let mut d = Domain::new(id, &cfg, shared_info);
    d.hv_commitment = commitment;
    if hv.options().guest_console_unlimited {
        d.console_limit = crate::console::RateLimit::unlimited();
    }
    hv.domains.insert(id, d);
    // The table exists from creation (as Xen's domain_create makes it), so the reserved
    // references can be seeded before the domain runs.
    let mem = hv.plat.mem();
    let d = hv.domains.get_mut(&id).expect("just added");
    if d.grant.grow(&mut hv.frames, mem, id, INITIAL_GRANT_FRAMES, &mut d.hv_mem).is_err() {
        destroy_domain(hv, id);
        return Err("out of memory for the grant table".into());
    }
    let (store_port, console_port) = if spec.is_dom0 {
        (Port(0), Port(0))
    } else {
        // The toolstack's alloc_unbound(domU, remote = dom0) for xenstore and console.
        let d = hv.domains.get_mut(&id).expect("just added");
        let unbound = PortState::Unbound { remote: DomId::DOM0 };
        let store = d.evtchn.alloc(unbound, 0).expect("fresh port table");
        let console = d.evtchn.alloc(unbound, 0).expect("fresh port table");
        (store, console)
    };
    let bc = BuildConfig {
        domid: id,
        nr_pages,
        is_dom0: spec.is_dom0,
        shared_info_maddr: shared_info.addr(),
        store_evtchn: store_port,
        console_evtchn: console_port,
        cmdline: spec.cmdline.as_bytes(),
        initrd: spec.initrd,
        hypervisor_l4: hv.frames.xen_l4_slots().entries,
    };
    let mem = hv.plat.mem();
    let built = match build_pv_domain(mem, &mut hv.frames.allocator(mem), &parsed, image, &bc) {
        Ok(b) => b,
        Err(e) => {
            destroy_domain(hv, id);
            return Err(e.to_string());
        }
    };
    for (pfn, mfn) in built.p2m.iter().enumerate() {
        hv.set_m2p(*mfn, pfn as u64);
    }
    // Validate and pin the bootstrap tables as libxc does (MMUEXT_PIN_L4_TABLE), then take
    // the vCPU's own reference on its base table.
    let mem = hv.plat.mem();
    let pinned = hv
        .frames
        .pin(mem, built.l4, id, 4)
        .and_then(|()| hv.frames.get_page_and_type(mem, built.l4, id, PageType::L4));
    if let Err(e) = pinned {
        destroy_domain(hv, id);
        return Err(alloc::format!("bootstrap page tables do not validate: {e}"));
    }
    // Xen starts every vCPU with event delivery masked; the guest unmasks when ready.
    for v in 0..spec.vcpus as usize {
        VcpuInfoRef { ma: shared_info.addr() + SharedInfo::vcpu_info_offset(v) as u64 }
            .set_upcall_mask(mem, true);
    }
    let d = hv.domains.get_mut(&id).expect("just added");
    // libxc's xc_dom_gnttab_init: the rings are granted to dom0 (console daemon, xenstored).
    for (gref, ring) in
        [(GNTTAB_RESERVED_CONSOLE, built.console_mfn), (GNTTAB_RESERVED_XENSTORE, built.store_mfn)]
    {
        if let Some(mfn) = ring {
            d.grant.seed(mem, gref, DomId::DOM0, mfn).expect("initial table holds the reserved entries");
        }
    }
    d.store_ring = built.store_mfn.map(|m| (m, store_port.0));
    d.console_ring = built.console_mfn.map(|m| (m, console_port.0));
    d.vcpus[0].boot(built.entry, built.stack_top, built.start_info_va, built.l4);
    hv.start_domain(id);
    Ok(id)
}

/// Destroys a domain: its vCPUs stop, its event channels close (peers see them unbound),
/// and every frame it owns goes back to the free pool once nobody else references it.
/// Returns the number of frames released now.
pub fn destroy_domain<P: Platform>(hv: &mut Hypervisor<P>, id: DomId) -> u64 {
    let Some(d) = hv.domains.get_mut(&id) else { return 0 };
    d.state = DomainState::Dying;
    for v in 0..d.vcpus.len() as u32 {
        hv.set_vcpu_timer(crate::sched::VcpuRef { domid: id, vcpu: v }, None);
    }
    hv.sched.remove_domain(id);
    if hv.sched.current().is_some_and(|r| r.domid == id) {
        hv.resched();
    }
    // Nothing here allocates: dom0 destroys domains when memory may be short.
    for p in 1..hv.domains[&id].evtchn.limit() {
        let _ = crate::event::close(hv, id, Port(p));
    }
    let mut bases: heapless::Vec<Mfn, { 2 * MAX_VCPUS }> = heapless::Vec::new();
    let mem = hv.plat.mem();
    let d = hv.domains.get_mut(&id).expect("exists");
    for v in d.vcpus.iter_mut() {
        for b in v.held_bases() {
            let _ = bases.push(b);
        }
        for f in core::mem::take(&mut v.gdt_frames).into_iter().chain(core::mem::take(&mut v.ldt_frames)) {
            hv.frames.put_page_and_type(mem, f);
        }
        if let Some(f) = v.vcpu_info_frame.take() {
            hv.frames.put_page_and_type(mem, f);
        }
    }
    // Grants: the mappings it holds of others' grants go first, while its page tables
    // are still live; its own table is given up (others' mappings of its frames keep
    // their references and are released without it).
    GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem }.release_mappings(id);
    // The table's frames, like shared_info, are lent hypervisor frames: relinquish drops
    // the loan and the frame table frees each once nobody maps it any more.
    hv.domains.get_mut(&id).expect("exists").grant.teardown();
    let stats = hv.frames.relinquish(mem, id, &bases);
    // This domain, and any dying granter whose last frames it held, may now go.
    for g in 0..hv.domains.id_bound() {
        reap_if_dead(hv, DomId(g));
    }
    if hv.frames.take_flush_pending() {
        hv.request_flush(crate::mm::tlb::Flush::All);
    }
    stats.released
}

/// Forgets a dying domain once it owns no frame any more (others' grant mappings or
/// foreign mappings can keep its frames, and so the domain, alive after destruction).
pub fn reap_if_dead<P: Platform>(hv: &mut Hypervisor<P>, id: DomId) -> bool {
    let dying = hv.domains.get(&id).is_some_and(|d| d.state == DomainState::Dying);
    if !dying || hv.frames.tot_pages(id) != 0 {
        return false;
    }
    let _ = hv.frames.remove_domain(id);
    if let Some(d) = hv.domains.remove(&id) {
        hv.sched.unreserve(d.vcpus.len());
        hv.hv_mem_pool.uncharge(d.hv_commitment);
    }
    true
}
