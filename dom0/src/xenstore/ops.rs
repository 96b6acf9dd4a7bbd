//! The node operations (READ, WRITE, MKDIR, RM, DIRECTORY, GET/SET_PERMS) with xenstored's
//! permission, inheritance and quota rules, written once against [`View`] so they run the same
//! on the global tree and inside a transaction.
//!
//! Permission errors follow xenstored's rule of not leaking existence: when a node is missing,
//! the caller learns `ENOENT` only if it holds the wanted right on the nearest existing
//! ancestor, and `EACCES` otherwise. Creating a node therefore needs write access to the
//! nearest existing ancestor. New nodes copy their parent's permissions; when an unprivileged
//! domain creates them it becomes their owner (and pays quota for them), while nodes dom0
//! creates keep the inherited owner.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use hypercall_abi::Errno;

use super::path::{self, ROOT};
use super::perms::{Access, Caller, Perms};
use super::store::{Change, Node, View};
use super::Quotas;

/// Who is operating and under which limits.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'q> {
    pub caller: Caller,
    pub quotas: &'q Quotas,
    /// What the caller's nodes may still grow by (its memory quota less what it holds);
    /// `None` for privileged callers and inside transactions, which charge their copies.
    pub mem_left: Option<usize>,
}

impl Ctx<'_> {
    /// The bytes of `node` at `path` charged to the caller (0 if someone else owns it).
    fn own_size(&self, path: &str, node: &Node) -> usize {
        if node.perms.owner() == self.caller.domid {
            node.mem_size(path)
        } else {
            0
        }
    }

    /// `ENOMEM` if the caller's nodes growing from `before` to `after` bytes would pass its
    /// memory quota (xenstored's answer to a domain over its `memory` quota).
    fn fits(&self, before: usize, after: usize) -> Result<(), Errno> {
        match self.mem_left {
            Some(left) if after.saturating_sub(before) > left => Err(Errno::ENOMEM),
            _ => Ok(()),
        }
    }

    fn check_size(&self, node: &Node) -> Result<(), Errno> {
        if !self.caller.privileged && node.acc_size() > self.quotas.node_size {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }
}

/// The node at `path` if the caller holds all of `want` on it.
pub(crate) fn lookup(v: &mut dyn View, caller: &Caller, path: &str, want: Access) -> Result<Node, Errno> {
    match v.get(path)? {
        Some(n) if caller.access(&n.perms).contains(want) => Ok(n),
        Some(_) => Err(Errno::EACCES),
        None => Err(errno_from_parents(v, caller, path, want)?),
    }
}

/// `ENOENT` if the nearest existing ancestor grants any of `want`, else `EACCES`.
fn errno_from_parents(v: &mut dyn View, caller: &Caller, path: &str, want: Access) -> Result<Errno, Errno> {
    let mut p = path;
    loop {
        p = path::parent(p);
        if let Some(n) = v.get(p)? {
            return Ok(if caller.access(&n.perms).intersects(want) { Errno::ENOENT } else { Errno::EACCES });
        }
        if p == ROOT {
            // The root always exists; a missing one is a broken store, not the caller's fault.
            return Ok(Errno::EIO);
        }
    }
}

/// The change report for `path` as it now is, visible to readers of the node or its parent.
fn change(v: &mut dyn View, path: &str, exact: bool, old: Option<Perms>) -> Result<Change, Errno> {
    let mut visible_under: Vec<Perms> = old.into_iter().collect();
    if let Some(n) = v.get(path)? {
        visible_under.push(n.perms);
    }
    if let Some(p) = v.get(path::parent(path))? {
        visible_under.push(p.perms);
    }
    Ok(Change { path: String::from(path), exact, visible_under })
}

/// READ.
pub(crate) fn read(v: &mut dyn View, caller: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    Ok(lookup(v, caller, path, Access::READ)?.value)
}

/// DIRECTORY / DIRECTORY_PART: the node, for its child list and generation.
pub(crate) fn directory(v: &mut dyn View, caller: &Caller, path: &str) -> Result<Node, Errno> {
    lookup(v, caller, path, Access::READ)
}

/// GET_PERMS.
pub(crate) fn get_perms(v: &mut dyn View, caller: &Caller, path: &str) -> Result<Perms, Errno> {
    Ok(lookup(v, caller, path, Access::READ)?.perms)
}

/// Creates `path` and any missing ancestors; the last gets `value`. The caller has already
/// established that the nearest existing ancestor grants it write access.
fn create(v: &mut dyn View, ctx: &Ctx, path: &str, value: Vec<u8>) -> Result<(), Errno> {
    let mut missing = alloc::vec![String::from(path)];
    let mut p = path::parent(path);
    let ancestor = loop {
        if let Some(n) = v.get(p)? {
            break n;
        }
        if p == ROOT {
            return Err(Errno::EIO);
        }
        missing.push(String::from(p));
        p = path::parent(p);
    };
    missing.reverse();
    let before = ctx.own_size(p, &ancestor);
    if !ctx.caller.privileged {
        let owned = v.owned_by(ctx.caller.domid) as usize;
        if owned.saturating_add(missing.len()) > ctx.quotas.nodes_per_domain as usize {
            return Err(Errno::ENOSPC);
        }
    }
    // Build every node first so quota failures leave the view untouched.
    let mut nodes: Vec<(String, Node)> = Vec::with_capacity(missing.len() + 1);
    nodes.push((String::from(p), ancestor));
    for name in missing {
        let (_, above) = nodes.last_mut().ok_or(Errno::EIO)?;
        above.children.push(path::basename(&name).to_string());
        let mut perms = above.perms.clone();
        if !ctx.caller.privileged {
            perms.set_owner(ctx.caller.domid);
        }
        nodes.push((name, Node::new(perms)));
    }
    if let Some((_, leaf)) = nodes.last_mut() {
        leaf.value = value;
    }
    for (_, n) in &nodes {
        ctx.check_size(n)?;
    }
    ctx.fits(before, nodes.iter().map(|(p, n)| ctx.own_size(p, n)).sum())?;
    v.created();
    for (p, n) in nodes {
        v.put(&p, n)?;
    }
    Ok(())
}

/// WRITE: sets the value, creating the node and missing parents if needed.
pub(crate) fn write(v: &mut dyn View, ctx: &Ctx, path: &str, value: Vec<u8>) -> Result<Vec<Change>, Errno> {
    match lookup(v, &ctx.caller, path, Access::WRITE) {
        Ok(mut n) => {
            let before = ctx.own_size(path, &n);
            n.value = value;
            ctx.check_size(&n)?;
            ctx.fits(before, ctx.own_size(path, &n))?;
            v.put(path, n)?;
        }
        Err(Errno::ENOENT) => create(v, ctx, path, value)?,
        Err(e) => return Err(e),
    }
    Ok(alloc::vec![change(v, path, false, None)?])
}

/// MKDIR: creates the node (empty) and missing parents; an existing node is left alone.
pub(crate) fn mkdir(v: &mut dyn View, ctx: &Ctx, path: &str) -> Result<Vec<Change>, Errno> {
    match lookup(v, &ctx.caller, path, Access::WRITE) {
        Ok(_) => Ok(Vec::new()),
        Err(Errno::ENOENT) => {
            create(v, ctx, path, Vec::new())?;
            Ok(alloc::vec![change(v, path, false, None)?])
        }
        Err(e) => Err(e),
    }
}

/// RM: removes the node and its whole subtree (write access to the node suffices). Removing
/// a missing node is fine if its parent exists. Each removed node is reported, the subtree's
/// inner nodes only to watches on exactly them, while the node is still readable.
pub(crate) fn rm(v: &mut dyn View, ctx: &Ctx, path: &str) -> Result<Vec<Change>, Errno> {
    let node = match lookup(v, &ctx.caller, path, Access::WRITE) {
        Ok(n) => n,
        Err(Errno::ENOENT) => {
            return match v.get(path::parent(path))? {
                Some(_) => Ok(Vec::new()),
                None => Err(Errno::ENOENT),
            }
        }
        Err(e) => return Err(e),
    };
    if path == ROOT {
        return Err(Errno::EINVAL);
    }
    let Some(mut parent) = v.get(path::parent(path))? else { return Err(Errno::EIO) };

    // Pre-order walk; reversed it lists every node after all of its descendants.
    let mut order: Vec<(String, Node)> = Vec::new();
    let mut stack = alloc::vec![(String::from(path), node)];
    while let Some((p, mut n)) = stack.pop() {
        // Values are not needed to remove or report a node: what the walk holds at once
        // stays within the paths of the subtree.
        n.value = Vec::new();
        for c in &n.children {
            let cp = path::child(&p, c);
            if let Some(cn) = v.get(&cp)? {
                stack.push((cp, cn));
            }
        }
        order.push((p, n));
    }
    let perms_of: BTreeMap<&str, &Perms> = order.iter().map(|(p, n)| (p.as_str(), &n.perms)).collect();
    let mut changes = Vec::with_capacity(order.len());
    for (p, n) in order.iter().rev() {
        let parent_perms = match perms_of.get(path::parent(p)) {
            Some(pp) => (*pp).clone(),
            None => parent.perms.clone(),
        };
        changes.push(Change {
            path: p.clone(),
            exact: p != path,
            visible_under: alloc::vec![n.perms.clone(), parent_perms],
        });
    }
    drop(perms_of);
    for (p, _) in order.iter().rev() {
        v.del(p)?;
    }
    let base = path::basename(path);
    parent.children.retain(|c| c != base);
    v.put(path::parent(path), parent)?;
    Ok(changes)
}

/// SET_PERMS: only the owner (or a privileged caller) may, and an unprivileged owner may not
/// hand the node to someone else.
pub(crate) fn set_perms(v: &mut dyn View, ctx: &Ctx, path: &str, perms: Perms) -> Result<Vec<Change>, Errno> {
    if !ctx.caller.privileged && perms.entries().len() > ctx.quotas.perms_per_node {
        return Err(Errno::ENOSPC);
    }
    let mut n = lookup(v, &ctx.caller, path, Access::WRITE.union(Access::OWNER))?;
    if !ctx.caller.privileged && perms.owner() != n.perms.owner() {
        return Err(Errno::EPERM);
    }
    let before = ctx.own_size(path, &n);
    let old = core::mem::replace(&mut n.perms, perms);
    ctx.check_size(&n)?;
    ctx.fits(before, ctx.own_size(path, &n))?;
    v.put(path, n)?;
    Ok(alloc::vec![change(v, path, false, Some(old))?])
}
