//! The nodes a Xen toolstack writes for a new domain and its devices, with the ownership and
//! permissions libxl gives them, so guests find what they expect and cannot touch what they
//! must not:
//!
//! * `/local/domain/<id>`, `cpu`, `memory`: owned by dom0, readable by the domain (`n0`,
//!   `r<id>`); `name`, `domid`, `cpu/<n>/availability`, `memory/target`, `store/*` inherit
//!   that.
//! * `device`, `control` (and its `shutdown`, `feature-*`, `sysrq`), `data`, `drivers`,
//!   `feature`, `attr`, `error`: owned by the domain (`n<id>`), where it writes.
//! * A device pair: the frontend `/local/domain/<fe>/device/<kind>/<devid>` owned by the
//!   frontend and readable by the backend (`n<fe>`, `r<be>`); the backend
//!   `/local/domain/<be>/backend/<kind>/<fe>/<devid>` owned by the backend and readable by the
//!   frontend (`n<be>`, `r<fe>`), so a guest can read but never rewrite its backend's nodes.
//!   Read-only frontend entries (the console's `type`, `limit`, `output`, `tty`) are owned by
//!   the backend and readable by the frontend.
//!
//! Everything is written as dom0 through [`Xenstore::execute`], so watches fire normally.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hypercall_abi::{DomId, Errno, Port};

use super::path::{domain_path, RELEASE_DOMAIN};
use super::perms::{Access, Caller, Perms};
use super::request::Request;
use super::Xenstore;

/// XenbusStateInitialising, the state both ends of a new device start in.
pub const XENBUS_STATE_INITIALISING: &str = "1";

/// The domain's xenstore ring, recorded under `store/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreRing {
    /// Frame of the ring page (`store/ring-ref`).
    pub gfn: u64,
    /// The domain's end of the event channel (`store/port`).
    pub port: Port,
}

/// The domain's PV console (`console/`), served by `backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Console {
    /// Frame of the console ring page (`console/ring-ref`).
    pub gfn: u64,
    /// The domain's end of the console event channel (`console/port`).
    pub port: Port,
    /// The domain serving the console (dom0 here).
    pub backend: DomId,
    /// `console/type`, e.g. `xenconsoled`.
    pub kind: String,
    /// `console/limit`, the byte cap of the log, if any.
    pub limit: Option<u64>,
}

/// What [`Xenstore::create_domain_nodes`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// The new domain.
    pub domid: DomId,
    /// `name`.
    pub name: String,
    /// `memory/target` and `memory/static-max`, in KiB.
    pub memory_kb: u64,
    /// The domain's vCPUs: `cpu/<n>/availability` is `online` for each (libxl writes it for
    /// every vCPU; Linux's xen cpu_hotplug reads it at boot and for each hotplug watch).
    pub vcpus: u32,
    /// `store/ring-ref` and `store/port`.
    pub store: Option<StoreRing>,
    /// `console/...` plus the console backend's nodes.
    pub console: Option<Console>,
}

/// A frontend/backend device pair for [`Xenstore::add_device`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Device class, e.g. `vbd`, `vif`.
    pub kind: String,
    /// Device number within the class (`<devid>` in both paths).
    pub devid: u32,
    /// The guest.
    pub frontend: DomId,
    /// The driver domain.
    pub backend: DomId,
    /// Extra frontend entries (the guest may change them).
    pub frontend_entries: Vec<(String, String)>,
    /// Extra frontend entries the guest may only read.
    pub frontend_ro_entries: Vec<(String, String)>,
    /// Extra backend entries (the guest may only read them).
    pub backend_entries: Vec<(String, String)>,
}

/// `/local/domain/<fe>/device/<kind>/<devid>`.
pub fn frontend_path(frontend: DomId, kind: &str, devid: u32) -> String {
    format!("{}/device/{kind}/{devid}", domain_path(u32::from(frontend.0)))
}

/// `/local/domain/<be>/backend/<kind>/<fe>/<devid>`.
pub fn backend_path(backend: DomId, kind: &str, frontend: DomId, devid: u32) -> String {
    format!("{}/backend/{kind}/{}/{devid}", domain_path(u32::from(backend.0)), frontend.0)
}

impl Xenstore {
    fn ts_write(&mut self, path: &str, value: &str) -> Result<(), Errno> {
        let req = Request::Write { path: String::from(path), value: Vec::from(value.as_bytes()) };
        self.execute(Caller::DOM0, req).map(drop)
    }

    fn ts_mknod(&mut self, path: &str, perms: &Perms) -> Result<(), Errno> {
        self.execute(Caller::DOM0, Request::Mkdir { path: String::from(path) })?;
        self.execute(Caller::DOM0, Request::SetPerms { path: String::from(path), perms: perms.clone() })
            .map(drop)
    }

    fn ts_rm(&mut self, path: &str) -> Result<(), Errno> {
        match self.execute(Caller::DOM0, Request::Rm { path: String::from(path) }) {
            Ok(_) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes a new domain's standard nodes (replacing any stale `/local/domain/<id>`).
    pub fn create_domain_nodes(&mut self, cfg: &DomainConfig) -> Result<(), Errno> {
        let id = cfg.domid;
        let dom = domain_path(u32::from(id.0));
        let ro = Perms::owned_by(DomId::DOM0, Access::NONE).with(id, Access::READ);
        let rw = Perms::owned_by(id, Access::NONE);
        self.ts_rm(&dom)?;
        self.ts_mknod(&dom, &ro)?;
        for sub in ["cpu", "memory"] {
            self.ts_mknod(&format!("{dom}/{sub}"), &ro)?;
        }
        for sub in [
            "device",
            "control",
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            self.ts_mknod(&format!("{dom}/{sub}"), &rw)?;
        }
        self.ts_write(&format!("{dom}/control/platform-feature-multiprocessor-suspend"), "1")?;
        self.ts_write(&format!("{dom}/control/platform-feature-xs_reset_watches"), "1")?;
        self.ts_write(&format!("{dom}/name"), &cfg.name)?;
        self.ts_write(&format!("{dom}/domid"), &format!("{}", id.0))?;
        self.ts_write(&format!("{dom}/memory/static-max"), &format!("{}", cfg.memory_kb))?;
        self.ts_write(&format!("{dom}/memory/target"), &format!("{}", cfg.memory_kb))?;
        for n in 0..cfg.vcpus {
            self.ts_write(&format!("{dom}/cpu/{n}/availability"), "online")?;
        }
        if let Some(s) = cfg.store {
            self.ts_write(&format!("{dom}/store/ring-ref"), &format!("{}", s.gfn))?;
            self.ts_write(&format!("{dom}/store/port"), &format!("{}", s.port.0))?;
        }
        if let Some(c) = &cfg.console {
            self.add_console(id, c)?;
        }
        Ok(())
    }

    /// The primary PV console: frontend at `/local/domain/<id>/console`, backend at
    /// `/local/domain/<be>/backend/console/<id>/0`.
    fn add_console(&mut self, id: DomId, c: &Console) -> Result<(), Errno> {
        let front = format!("{}/console", domain_path(u32::from(id.0)));
        let back = backend_path(c.backend, "console", id, 0);
        let front_perms = Perms::owned_by(id, Access::NONE).with(c.backend, Access::READ);
        let ro_perms = Perms::owned_by(c.backend, Access::NONE).with(id, Access::READ);
        let back_perms = ro_perms.clone();
        self.ts_rm(&front)?;
        self.ts_mknod(&front, &front_perms)?;
        self.ts_write(&format!("{front}/backend"), &back)?;
        self.ts_write(&format!("{front}/backend-id"), &format!("{}", c.backend.0))?;
        self.ts_write(&format!("{front}/ring-ref"), &format!("{}", c.gfn))?;
        self.ts_write(&format!("{front}/port"), &format!("{}", c.port.0))?;
        let mut ro: Vec<(String, String)> = alloc::vec![
            (String::from("type"), c.kind.clone()),
            (String::from("output"), String::from("pty")),
            (String::from("tty"), String::new()),
        ];
        if let Some(limit) = c.limit {
            ro.push((String::from("limit"), format!("{limit}")));
        }
        for (k, v) in &ro {
            let p = format!("{front}/{k}");
            self.ts_write(&p, v)?;
            self.execute(Caller::DOM0, Request::SetPerms { path: p, perms: ro_perms.clone() })?;
        }
        self.ts_rm(&back)?;
        self.ts_mknod(&back, &back_perms)?;
        self.ts_write(&format!("{back}/frontend"), &front)?;
        self.ts_write(&format!("{back}/frontend-id"), &format!("{}", id.0))?;
        self.ts_write(&format!("{back}/online"), "1")?;
        self.ts_write(&format!("{back}/state"), XENBUS_STATE_INITIALISING)?;
        self.ts_write(&format!("{back}/protocol"), "vt100")?;
        Ok(())
    }

    /// Writes a device's frontend and backend directories, cross-linked, both in
    /// XenbusStateInitialising (libxl's `device_generic_add`).
    pub fn add_device(&mut self, dev: &DeviceConfig) -> Result<(), Errno> {
        let front = frontend_path(dev.frontend, &dev.kind, dev.devid);
        let back = backend_path(dev.backend, &dev.kind, dev.frontend, dev.devid);
        let front_perms = Perms::owned_by(dev.frontend, Access::NONE).with(dev.backend, Access::READ);
        let ro_perms = Perms::owned_by(dev.backend, Access::NONE).with(dev.frontend, Access::READ);

        self.ts_rm(&front)?;
        self.ts_mknod(&front, &front_perms)?;
        self.ts_write(&format!("{front}/backend"), &back)?;
        self.ts_write(&format!("{front}/backend-id"), &format!("{}", dev.backend.0))?;
        self.ts_write(&format!("{front}/state"), XENBUS_STATE_INITIALISING)?;
        for (k, v) in &dev.frontend_entries {
            self.ts_write(&format!("{front}/{k}"), v)?;
        }
        for (k, v) in &dev.frontend_ro_entries {
            let p = format!("{front}/{k}");
            self.ts_write(&p, v)?;
            self.execute(Caller::DOM0, Request::SetPerms { path: p, perms: ro_perms.clone() })?;
        }

        self.ts_rm(&back)?;
        self.ts_mknod(&back, &ro_perms)?;
        self.ts_write(&format!("{back}/frontend"), &front)?;
        self.ts_write(&format!("{back}/frontend-id"), &format!("{}", dev.frontend.0))?;
        self.ts_write(&format!("{back}/online"), "1")?;
        self.ts_write(&format!("{back}/state"), XENBUS_STATE_INITIALISING)?;
        for (k, v) in &dev.backend_entries {
            self.ts_write(&format!("{back}/{k}"), v)?;
        }
        Ok(())
    }

    /// Removes a device pair's directories.
    pub fn remove_device(
        &mut self,
        kind: &str,
        frontend: DomId,
        backend: DomId,
        devid: u32,
    ) -> Result<(), Errno> {
        self.ts_rm(&frontend_path(frontend, kind, devid))?;
        self.ts_rm(&backend_path(backend, kind, frontend, devid))
    }

    /// Lets `watcher` see `@releaseDomain` fire: read permission on the special node, which
    /// since XSA-115 (Xen 4.15+, the C and OCaml xenstored alike) is what a domain other than
    /// dom0 needs for the event, and what `xenstore-chmod @releaseDomain` gives a
    /// disaggregated driver domain under Xen. The event names no domain, as under Xen.
    pub fn grant_release_watch(&mut self, watcher: DomId) -> Result<(), Errno> {
        let path = String::from(RELEASE_DOMAIN);
        let perms = self.store().get(RELEASE_DOMAIN).map(|n| n.perms.clone()).ok_or(Errno::ENOENT)?;
        if perms.entries().iter().any(|e| e.domid == watcher) {
            return Ok(());
        }
        let perms = perms.with(watcher, Access::READ);
        self.execute(Caller::DOM0, Request::SetPerms { path, perms }).map(drop)
    }

    /// Removes what the toolstack wrote for a destroyed domain: its `/local/domain/<id>` and
    /// every backend directory serving it (`/local/domain/*/backend/*/<id>`).
    pub fn remove_domain_nodes(&mut self, domid: DomId) -> Result<(), Errno> {
        let mut backends = Vec::new();
        if let Some(local) = self.store().get("/local/domain") {
            for be in &local.children {
                let bpath = format!("/local/domain/{be}/backend");
                if let Some(kinds) = self.store().get(&bpath) {
                    for kind in &kinds.children {
                        backends.push(format!("{bpath}/{kind}/{}", domid.0));
                    }
                }
            }
        }
        for p in backends {
            self.ts_rm(&p)?;
        }
        self.ts_rm(&domain_path(u32::from(domid.0)))
    }
}
