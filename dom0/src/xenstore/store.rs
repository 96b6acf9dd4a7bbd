//! The node tree, its per-owner accounting, and transactions.
//!
//! Nodes live in one map keyed by canonical path; each node also lists its children by name
//! (in creation order, as xenstored keeps them), so adding or removing a child modifies the
//! parent. That matters for transactions: like xenstored we detect conflicts per node with a
//! generation number that every modification refreshes, so two transactions creating siblings
//! conflict through the shared parent.
//!
//! A transaction is an overlay: the first time it touches a path it records the generation it
//! saw there (or that the path was absent) and works on a private copy. Committing checks that
//! every recorded path still has the recorded generation, then writes the modified copies into
//! the global tree with fresh generations; otherwise the commit fails with `EAGAIN`.
//!
//! Memory: the store keeps, per owner, the bytes of dom0's heap its nodes hold
//! ([`Node::mem_size`]: the path key, value, permissions, child names and a fixed overhead
//! per node and per child), which xenstored's per-domain memory quota charges; a transaction
//! counts the bytes of its copies the same way.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use hypercall_abi::{DomId, Errno};

use super::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN, ROOT};
use super::perms::{Access, Perms};

/// Heap bytes of a node beyond its variable parts: its entry in the tree's map (key and
/// node headers, the map's own nodes amortised) and the blocks of its value, permission and
/// child lists. Calibrated against a counting allocator (`memory_charges_cover_allocations`
/// in the tests), rounded up.
pub const NODE_OVERHEAD: usize = 256;
/// Heap bytes of one child name in its parent's list beyond the name itself.
pub const CHILD_OVERHEAD: usize = 48;
/// Heap bytes of one permission entry.
pub const PERM_SIZE: usize = 8;
/// Heap bytes a transaction keeps per path it touched beyond the node copy (its entry in the
/// accessed map and in the change list, the path twice).
pub const TX_ACCESS_OVERHEAD: usize = 192;

/// One node: a value, a permission list, child names and a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Arbitrary bytes (usually ASCII without a NUL).
    pub value: Vec<u8>,
    /// Owner first.
    pub perms: Perms,
    /// Child names in creation order.
    pub children: Vec<String>,
    /// Refreshed by every modification; what transactions compare.
    pub generation: u64,
}

impl Node {
    /// An empty node with `perms`.
    pub fn new(perms: Perms) -> Node {
        Node { value: Vec::new(), perms, children: Vec::new(), generation: 0 }
    }

    /// Bytes of the NUL-separated child list (`childlen` in xenstored).
    pub fn children_len(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// The size xenstored charges against the node-size quota: its 16-byte header, 8 bytes per
    /// permission entry, the value and the child list.
    pub fn acc_size(&self) -> usize {
        16 + self.perms.acc_size() + self.value.len() + self.children_len()
    }

    /// The bytes of dom0's heap the node at `path` holds: what the memory quota charges its
    /// owner.
    pub fn mem_size(&self, path: &str) -> usize {
        NODE_OVERHEAD
            + path.len()
            + self.value.len()
            + self.perms.entries().len() * PERM_SIZE
            + self.children.iter().map(|c| c.len() + CHILD_OVERHEAD).sum::<usize>()
    }

    /// The DIRECTORY payload: each child name followed by NUL.
    pub fn children_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children_len());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// The global tree.
#[derive(Clone, Debug)]
pub struct Store {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    owned: BTreeMap<DomId, u32>,
    /// Per owner, the sum of its nodes' [`Node::mem_size`].
    mem: BTreeMap<DomId, usize>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// The initial tree xenstored creates: `/`, `/tool`, `/tool/xenstored` and the two special
    /// watch nodes, all owned by dom0 with no access for others.
    pub fn new() -> Store {
        let mut s =
            Store { nodes: BTreeMap::new(), generation: 0, owned: BTreeMap::new(), mem: BTreeMap::new() };
        let perms = Perms::owned_by(DomId::DOM0, Access::NONE);
        let mut root = Node::new(perms.clone());
        root.children.push(String::from("tool"));
        let mut tool = Node::new(perms.clone());
        tool.children.push(String::from("xenstored"));
        s.put(ROOT, root);
        s.put("/tool", tool);
        s.put("/tool/xenstored", Node::new(perms.clone()));
        s.put(INTRODUCE_DOMAIN, Node::new(perms.clone()));
        s.put(RELEASE_DOMAIN, Node::new(perms));
        s
    }

    /// The node at a canonical path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// How many nodes `domid` owns (what the node quota counts).
    pub fn owned_by(&self, domid: DomId) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// The heap bytes `domid`'s nodes hold (what the memory quota counts of them).
    pub fn mem_of(&self, domid: DomId) -> usize {
        self.mem.get(&domid).copied().unwrap_or(0)
    }

    /// Every node, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The latest generation handed out.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn count(&mut self, domid: DomId, add: bool) {
        let c = self.owned.entry(domid).or_insert(0);
        if add {
            *c = c.saturating_add(1);
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&domid);
            }
        }
    }

    fn charge(&mut self, domid: DomId, bytes: usize, add: bool) {
        let m = self.mem.entry(domid).or_insert(0);
        if add {
            *m = m.saturating_add(bytes);
        } else {
            *m = m.saturating_sub(bytes);
            if *m == 0 {
                self.mem.remove(&domid);
            }
        }
    }

    /// Inserts or replaces a node, giving it a fresh generation and keeping the per-owner
    /// counts and memory right. The caller keeps parents' child lists right.
    pub(crate) fn put(&mut self, path: &str, mut node: Node) {
        self.generation += 1;
        node.generation = self.generation;
        let owner = node.perms.owner();
        let size = node.mem_size(path);
        match self.nodes.insert(String::from(path), node) {
            Some(old) => {
                let old_owner = old.perms.owner();
                self.charge(old_owner, old.mem_size(path), false);
                if old_owner != owner {
                    self.count(old_owner, false);
                    self.count(owner, true);
                }
            }
            None => self.count(owner, true),
        }
        self.charge(owner, size, true);
    }

    /// Removes a node (not its children, not its parent's entry).
    pub(crate) fn del(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.count(old.perms.owner(), false);
            self.charge(old.perms.owner(), old.mem_size(path), false);
        }
    }

    /// Drops `domid` from every permission list that names it in a non-owner entry, refreshing
    /// those nodes' generations so transactions holding older copies cannot restore it.
    pub(crate) fn forget_domain_perms(&mut self, domid: DomId) {
        let paths: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.perms.entries()[1..].iter().any(|e| e.domid == domid))
            .map(|(p, _)| p.clone())
            .collect();
        for p in paths {
            if let Some(mut n) = self.nodes.get(&p).cloned() {
                n.perms.forget(domid);
                self.put(&p, n);
            }
        }
    }

    /// Checks the structural invariants: every `/` node's parent exists and lists it, every
    /// listed child exists, only the two special nodes live outside the tree, and the
    /// per-owner counts match the tree. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.nodes.contains_key(ROOT) {
            return Err(String::from("no root"));
        }
        let mut counts: BTreeMap<DomId, u32> = BTreeMap::new();
        let mut mem: BTreeMap<DomId, usize> = BTreeMap::new();
        for (p, n) in &self.nodes {
            *counts.entry(n.perms.owner()).or_insert(0) += 1;
            *mem.entry(n.perms.owner()).or_insert(0) += n.mem_size(p);
            if path::is_special(p) {
                if p != INTRODUCE_DOMAIN && p != RELEASE_DOMAIN {
                    return Err(alloc::format!("stray special node {p}"));
                }
                continue;
            }
            for c in &n.children {
                if !self.nodes.contains_key(&path::child(p, c)) {
                    return Err(alloc::format!("{p} lists missing child {c}"));
                }
            }
            if p == ROOT {
                continue;
            }
            let parent = path::parent(p);
            match self.nodes.get(parent) {
                None => return Err(alloc::format!("{p} has no parent")),
                Some(pn) if !pn.children.iter().any(|c| c == path::basename(p)) => {
                    return Err(alloc::format!("{parent} does not list {p}"))
                }
                Some(pn) if pn.children.iter().filter(|c| *c == path::basename(p)).count() != 1 => {
                    return Err(alloc::format!("{parent} lists {p} twice"))
                }
                Some(_) => {}
            }
        }
        if counts != self.owned {
            return Err(alloc::format!("owner counts {:?} != tree {:?}", self.owned, counts));
        }
        if mem != self.mem {
            return Err(alloc::format!("owner memory {:?} != tree {:?}", self.mem, mem));
        }
        Ok(())
    }
}

/// What a transaction knows about one path.
#[derive(Clone, Debug)]
struct Accessed {
    /// Generation seen on first access, `None` if the path was absent.
    observed: Option<u64>,
    /// Permissions the node had on first access (watchers who could read it then are told).
    original_perms: Option<Perms>,
    /// The transaction's view of the node.
    current: Option<Node>,
    /// Written or deleted by the transaction.
    modified: bool,
}

/// A change that may fire watches: the changed path, whether only watches on exactly this path
/// match (used for the children of a removed subtree), and the permission lists of which any
/// granting read lets a watcher see the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Canonical path of the modified node.
    pub path: String,
    /// Only exact watches match.
    pub exact: bool,
    /// A watcher must be able to read under at least one of these.
    pub visible_under: Vec<Perms>,
}

/// An open transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    accessed: BTreeMap<String, Accessed>,
    /// Per-owner change in node count if committed.
    owner_delta: BTreeMap<DomId, i64>,
    /// Modified paths to report at commit, with their exactness.
    changes: BTreeMap<String, bool>,
    /// Set when an operation hit the accessed-node limit: the transaction cannot commit.
    failed: Option<Errno>,
    created: bool,
    max_nodes: usize,
    /// Heap bytes held for node copies and bookkeeping (an upper bound: every copy and
    /// rewrite is counted).
    bytes: usize,
    max_bytes: usize,
    /// A further bound on `bytes` for this request: what is left of the owner's memory quota.
    ceiling: usize,
}

impl Transaction {
    /// A transaction that may touch at most `max_nodes` distinct paths and hold at most
    /// `max_bytes` of node copies.
    pub fn new(max_nodes: usize, max_bytes: usize) -> Transaction {
        Transaction {
            accessed: BTreeMap::new(),
            owner_delta: BTreeMap::new(),
            changes: BTreeMap::new(),
            failed: None,
            created: false,
            max_nodes,
            bytes: 0,
            max_bytes,
            ceiling: usize::MAX,
        }
    }

    /// Bounds what the transaction may hold from now on to `bytes` in all (its domain's
    /// memory quota, less what the domain holds elsewhere), on top of its own budget.
    pub(crate) fn set_ceiling(&mut self, bytes: usize) {
        self.ceiling = bytes;
    }

    /// Charges `cost` bytes, failing the transaction (`ENOMEM`, xenstored's memory-quota
    /// answer) past its budget.
    fn charge(&mut self, cost: usize) -> Result<(), Errno> {
        let total = self.bytes.saturating_add(cost);
        if total > self.max_bytes.min(self.ceiling) {
            self.failed = Some(Errno::ENOMEM);
            return Err(Errno::ENOMEM);
        }
        self.bytes = total;
        Ok(())
    }

    /// Heap bytes charged so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of distinct paths touched.
    pub fn accessed_count(&self) -> usize {
        self.accessed.len()
    }

    /// Records a change to report at commit; a non-exact report wins over an exact one.
    pub(crate) fn note_change(&mut self, path: &str, exact: bool) {
        let e = self.changes.entry(String::from(path)).or_insert(exact);
        *e = *e && exact;
    }

    /// Checks for conflicts and quota, then applies the transaction to `store`. Returns the
    /// changes whose watches should fire. `quota` is the node limit to enforce on owners whose
    /// count grows, `mem` the committer and the heap bytes its nodes may grow by (`None` for
    /// privileged committers; `ENOMEM` beyond, as xenstored's memory quota answers).
    pub fn commit(
        self,
        store: &mut Store,
        quota: Option<u32>,
        mem: Option<(DomId, usize)>,
    ) -> Result<Vec<Change>, Errno> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        for (p, a) in &self.accessed {
            if store.get(p).map(|n| n.generation) != a.observed {
                return Err(Errno::EAGAIN);
            }
        }
        if let (Some(limit), true) = (quota, self.created) {
            for (d, delta) in &self.owner_delta {
                if *delta > 0 && i64::from(store.owned_by(*d)) + delta > i64::from(limit) {
                    return Err(Errno::ENOSPC);
                }
            }
        }
        if let Some((who, room)) = mem {
            let mut grow = 0usize;
            let mut shrink = 0usize;
            for (p, a) in self.accessed.iter().filter(|(_, a)| a.modified) {
                if let Some(n) = a.current.as_ref().filter(|n| n.perms.owner() == who) {
                    grow = grow.saturating_add(n.mem_size(p));
                }
                if let Some(n) = store.get(p).filter(|n| n.perms.owner() == who) {
                    shrink = shrink.saturating_add(n.mem_size(p));
                }
            }
            if grow.saturating_sub(shrink) > room {
                return Err(Errno::ENOMEM);
            }
        }
        let mut out = Vec::new();
        for (p, a) in self.accessed {
            if !a.modified {
                continue;
            }
            match a.current {
                Some(n) => store.put(&p, n),
                None => store.del(&p),
            }
            if let Some(&exact) = self.changes.get(&p) {
                let mut visible_under = Vec::new();
                visible_under.extend(a.original_perms);
                if let Some(n) = store.get(&p) {
                    visible_under.push(n.perms.clone());
                }
                if let Some(parent) = store.get(path::parent(&p)) {
                    visible_under.push(parent.perms.clone());
                }
                out.push(Change { path: p, exact, visible_under });
            }
        }
        Ok(out)
    }
}

/// Access to nodes for the operations: either the global tree or a transaction's view of it.
pub(crate) trait View {
    /// The node at `path` as this view sees it. Fails only when a transaction touches more
    /// paths than allowed.
    fn get(&mut self, path: &str) -> Result<Option<Node>, Errno>;
    /// Stores `node` at `path`.
    fn put(&mut self, path: &str, node: Node) -> Result<(), Errno>;
    /// Removes the node at `path`.
    fn del(&mut self, path: &str) -> Result<(), Errno>;
    /// Nodes `domid` would own in this view.
    fn owned_by(&self, domid: DomId) -> u32;
    /// Called once per operation that creates nodes (commit re-checks quota then).
    fn created(&mut self) {}
}

/// The global tree, changed in place.
pub(crate) struct Global<'a>(pub &'a mut Store);

impl View for Global<'_> {
    fn get(&mut self, path: &str) -> Result<Option<Node>, Errno> {
        Ok(self.0.get(path).cloned())
    }
    fn put(&mut self, path: &str, node: Node) -> Result<(), Errno> {
        self.0.put(path, node);
        Ok(())
    }
    fn del(&mut self, path: &str) -> Result<(), Errno> {
        self.0.del(path);
        Ok(())
    }
    fn owned_by(&self, domid: DomId) -> u32 {
        self.0.owned_by(domid)
    }
}

/// A transaction's overlay over the (unchanged) global tree.
pub(crate) struct InTx<'a> {
    pub store: &'a Store,
    pub tx: &'a mut Transaction,
}

impl InTx<'_> {
    fn access(&mut self, path: &str) -> Result<&mut Accessed, Errno> {
        if let Some(e) = self.tx.failed {
            return Err(e);
        }
        if !self.tx.accessed.contains_key(path) {
            if self.tx.accessed.len() >= self.tx.max_nodes {
                self.tx.failed = Some(Errno::ENOSPC);
                return Err(Errno::ENOSPC);
            }
            let node = self.store.get(path);
            self.tx.charge(TX_ACCESS_OVERHEAD + node.map_or(path.len(), |n| n.mem_size(path)))?;
            let node = node.cloned();
            let a = Accessed {
                observed: node.as_ref().map(|n| n.generation),
                original_perms: node.as_ref().map(|n| n.perms.clone()),
                current: node,
                modified: false,
            };
            self.tx.accessed.insert(String::from(path), a);
        }
        // Just inserted or already present.
        self.tx.accessed.get_mut(path).ok_or(Errno::EIO)
    }

    fn adjust(&mut self, owner: Option<DomId>, add: bool) {
        if let Some(d) = owner {
            let e = self.tx.owner_delta.entry(d).or_insert(0);
            *e += if add { 1 } else { -1 };
        }
    }
}

impl View for InTx<'_> {
    fn get(&mut self, path: &str) -> Result<Option<Node>, Errno> {
        Ok(self.access(path)?.current.clone())
    }
    fn put(&mut self, path: &str, node: Node) -> Result<(), Errno> {
        let new_owner = node.perms.owner();
        self.access(path)?;
        self.tx.charge(node.mem_size(path))?;
        let a = self.access(path)?;
        let old_owner = a.current.as_ref().map(|n| n.perms.owner());
        a.current = Some(node);
        a.modified = true;
        if old_owner != Some(new_owner) {
            self.adjust(old_owner, false);
            self.adjust(Some(new_owner), true);
        }
        Ok(())
    }
    fn del(&mut self, path: &str) -> Result<(), Errno> {
        let a = self.access(path)?;
        let old_owner = a.current.as_ref().map(|n| n.perms.owner());
        a.current = None;
        a.modified = true;
        self.adjust(old_owner, false);
        Ok(())
    }
    fn owned_by(&self, domid: DomId) -> u32 {
        let delta = self.tx.owner_delta.get(&domid).copied().unwrap_or(0);
        let n = i64::from(self.store.owned_by(domid)) + delta;
        u32::try_from(n.max(0)).unwrap_or(u32::MAX)
    }
    fn created(&mut self) {
        self.tx.created = true;
    }
}
