//! Xenstore node permissions: an ordered list of `{domid, n|r|w|b}` entries whose first entry
//! names the owner and gives the access of every domain not listed later.
//!
//! The rule for a caller (xenstored's `perm_for_conn`): a privileged caller, the owner, and a
//! caller whose SET_TARGET target is the owner get everything (read, write and ownership);
//! otherwise the first later entry naming the caller (or its target) decides; otherwise the
//! owner entry's access applies.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use hypercall_abi::{DomId, Errno};

/// A set of access rights as xenstore grants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Access(u8);

impl Access {
    /// `n`: nothing.
    pub const NONE: Access = Access(0);
    /// `r`.
    pub const READ: Access = Access(1);
    /// `w`.
    pub const WRITE: Access = Access(2);
    /// `b`: read and write.
    pub const BOTH: Access = Access(3);
    /// Ownership: may change the permissions. Never stored in an entry; implied by ownership.
    pub const OWNER: Access = Access(4);
    /// Everything a privileged caller or the owner has.
    pub const ALL: Access = Access(7);

    /// True if every right in `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any right in `other` is in `self` (xenstored's test on parents).
    pub fn intersects(self, other: Access) -> bool {
        self.0 & other.0 != 0
    }

    /// Union.
    pub fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// The wire letter of an entry's rights (ownership is not part of an entry).
    pub fn letter(self) -> char {
        match self.0 & 3 {
            0 => 'n',
            1 => 'r',
            2 => 'w',
            _ => 'b',
        }
    }

    /// Rights named by a wire letter.
    pub fn from_letter(c: u8) -> Option<Access> {
        match c {
            b'n' => Some(Access::NONE),
            b'r' => Some(Access::READ),
            b'w' => Some(Access::WRITE),
            b'b' => Some(Access::BOTH),
            _ => None,
        }
    }
}

/// One `{domid, access}` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermEntry {
    /// The domain this entry is about.
    pub domid: DomId,
    /// Its rights (read/write only).
    pub access: Access,
}

impl PermEntry {
    /// Builds an entry; ownership bits are dropped as they cannot be granted.
    pub fn new(domid: DomId, access: Access) -> PermEntry {
        PermEntry { domid, access: Access(access.0 & 3) }
    }
}

/// A node's permission list. Never empty: entry 0 is the owner and the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms(Vec<PermEntry>);

/// Who is asking: what permission checks need to know about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain.
    pub domid: DomId,
    /// Privileged connections (dom0) bypass every permission check and most quotas.
    pub privileged: bool,
    /// Set by SET_TARGET: this caller acts with the target's rights too.
    pub target: Option<DomId>,
}

impl Caller {
    /// dom0's privileged identity, used by the toolstack helpers.
    pub const DOM0: Caller = Caller { domid: DomId::DOM0, privileged: true, target: None };

    /// An unprivileged caller for `domid`.
    pub fn domu(domid: DomId) -> Caller {
        Caller { domid, privileged: false, target: None }
    }

    fn is(&self, domid: DomId) -> bool {
        self.domid == domid || self.target == Some(domid)
    }

    /// The rights this caller has on a node with `perms`.
    pub fn access(&self, perms: &Perms) -> Access {
        if self.privileged || self.is(perms.owner()) {
            return Access::ALL;
        }
        perms.0[1..].iter().find(|e| self.is(e.domid)).map_or(perms.0[0].access, |e| e.access)
    }
}

impl Perms {
    /// An owner entry and nothing else.
    pub fn owned_by(owner: DomId, default: Access) -> Perms {
        Perms(alloc::vec![PermEntry::new(owner, default)])
    }

    /// From entries; `None` if there are none.
    pub fn from_entries(entries: Vec<PermEntry>) -> Option<Perms> {
        if entries.is_empty() {
            None
        } else {
            Some(Perms(entries.into_iter().map(|e| PermEntry::new(e.domid, e.access)).collect()))
        }
    }

    /// Builder: adds an entry for `domid`.
    pub fn with(mut self, domid: DomId, access: Access) -> Perms {
        self.0.push(PermEntry::new(domid, access));
        self
    }

    /// The entries, owner first.
    pub fn entries(&self) -> &[PermEntry] {
        &self.0
    }

    /// The owning domain (quota is charged to it).
    pub fn owner(&self) -> DomId {
        self.0[0].domid
    }

    /// Replaces the owner, keeping its default access (what node creation by an unprivileged
    /// domain does to the inherited list).
    pub fn set_owner(&mut self, owner: DomId) {
        self.0[0].domid = owner;
    }

    /// Removes the non-owner entries naming `domid` (a released domain must not pass its
    /// rights to a later domain reusing the id). True if anything changed.
    pub fn forget(&mut self, domid: DomId) -> bool {
        let before = self.0.len();
        let mut i = 1;
        while i < self.0.len() {
            if self.0[i].domid == domid {
                self.0.remove(i);
            } else {
                i += 1;
            }
        }
        self.0.len() != before
    }

    /// True if any entry names `domid`.
    pub fn mentions(&self, domid: DomId) -> bool {
        self.0.iter().any(|e| e.domid == domid)
    }

    /// The size xenstored charges for the list (`struct xs_permissions` is 8 bytes).
    pub fn acc_size(&self) -> usize {
        self.0.len() * 8
    }

    /// GET_PERMS payload: each entry as `<letter><domid>` followed by NUL.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut s = String::new();
        for e in &self.0 {
            // Writing to a String cannot fail.
            let _ = write!(s, "{}{}\0", e.access.letter(), e.domid.0);
        }
        s.into_bytes()
    }

    /// Parses one `<letter><domid>` string.
    pub fn parse_entry(s: &[u8]) -> Result<PermEntry, Errno> {
        let (&letter, digits) = s.split_first().ok_or(Errno::EINVAL)?;
        let access = Access::from_letter(letter).ok_or(Errno::EINVAL)?;
        let domid = parse_decimal(digits).ok_or(Errno::EINVAL)?;
        let domid = u16::try_from(domid).map_err(|_| Errno::EINVAL)?;
        Ok(PermEntry::new(DomId(domid), access))
    }
}

/// Parses a non-empty, all-digit decimal number that fits in a u32.
pub fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    u32::try_from(v).ok()
}
