//! The XenBus handshake (`public/io/xenbus.h`), written once for frontends and backends: each
//! end publishes its [`XenbusState`] in its `state` node and reacts to the other end's,
//! which it learns through a watch on the other end's `state` node.
//!
//! Startup (blkif.h's sequence): the toolstack creates both ends in Initialising; the backend
//! announces itself (InitWait); the frontend, seeing InitWait, sets its side up and goes
//! Connected (directly, as mini-os does, or through Initialised); the backend, seeing the
//! frontend Initialised or Connected, does its part and goes Connected. Teardown: whoever
//! leaves goes Closing; the other end follows to Closing, and each end goes Closed once the
//! other is closing too.
//!
//! Everything here is pure: a [`Store`] is whatever reads and writes nodes (a xenstore
//! client, or dom0's in-process store), so the whole handshake is host-tested.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::Errno;

/// Which end of a split device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Frontend,
    Backend,
}

/// Node access the state machine needs.
pub trait Store {
    /// A node's value.
    fn read_node(&mut self, path: &str) -> Result<Vec<u8>, Errno>;
    /// Writes a node.
    fn write_node(&mut self, path: &str, value: &[u8]) -> Result<(), Errno>;
}

impl<T: crate::xenbus::Transport> Store for crate::xenbus::Xenbus<T> {
    fn read_node(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.read(crate::xenbus::TxId::NONE, path)
    }
    fn write_node(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.write(crate::xenbus::TxId::NONE, path, value)
    }
}

/// True if `role` may move its own state from `from` to `to`. Rewriting the current state
/// is always allowed (it changes nothing).
pub fn transition_allowed(role: Role, from: XenbusState, to: XenbusState) -> bool {
    use XenbusState::*;
    if from == to {
        return true;
    }
    match to {
        Unknown => false,
        Initialising => matches!(from, Unknown | Closed),
        InitWait => role == Role::Backend && from == Initialising,
        Initialised => role == Role::Frontend && from == Initialising,
        Connected => match role {
            Role::Backend => matches!(from, InitWait | Reconfigured),
            Role::Frontend => matches!(from, Initialising | Initialised | Reconfigured),
        },
        Closing => !matches!(from, Unknown | Closing | Closed),
        Closed => true,
        Reconfiguring => from == Connected,
        Reconfigured => from == Reconfiguring,
    }
}

/// What an end should do next, given both states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Backend: publish features and go InitWait.
    Announce,
    /// Set this end up (map the ring, bind the event channel...), then go Connected.
    Connect,
    /// The other end is leaving: release resources in use and go Closing.
    Close,
    /// Finish the teardown: go Closed.
    Closed,
}

impl Step {
    /// The state the step ends in.
    pub fn target(self, role: Role) -> XenbusState {
        match (self, role) {
            (Step::Announce, Role::Backend) => XenbusState::InitWait,
            (Step::Announce, Role::Frontend) => XenbusState::Initialised,
            (Step::Connect, _) => XenbusState::Connected,
            (Step::Close, _) => XenbusState::Closing,
            (Step::Closed, _) => XenbusState::Closed,
        }
    }
}

/// The policy both ends follow (see the module comment). `None`: wait for the other end.
pub fn next_step(role: Role, own: XenbusState, other: XenbusState) -> Option<Step> {
    use XenbusState::*;
    match (own, other) {
        (Closed, _) => None,
        (_, Closed) => Some(Step::Closed),
        // The frontend goes Closed once both are closing; the backend stays Closing until the
        // frontend is Closed (Linux's blkback and netback do): a Linux frontend shutting down
        // waits for the backend's Closing itself (`xenbus_frontend_dev_shutdown`), and one
        // that reads Closed instead waits its 5 s timeout.
        (Closing, Closing) if role == Role::Frontend => Some(Step::Closed),
        (Closing, _) => None,
        (Unknown, _) => None,
        (_, Closing) => Some(Step::Close),
        (Initialising, _) if role == Role::Backend => Some(Step::Announce),
        (InitWait, Initialised | Connected) if role == Role::Backend => Some(Step::Connect),
        (Initialising | Initialised, InitWait | Connected) if role == Role::Frontend => Some(Step::Connect),
        _ => None,
    }
}

/// One end of a device: its own directory and state, and what it last saw of the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenbusDevice {
    pub role: Role,
    /// This end's directory (`/local/domain/<fe>/device/<kind>/<id>` or the backend's).
    pub dir: String,
    /// The other end's directory.
    pub other_dir: String,
    state: XenbusState,
    other: XenbusState,
}

impl XenbusDevice {
    /// An end that has not read anything yet (both states Unknown).
    pub fn new(role: Role, dir: &str, other_dir: &str) -> XenbusDevice {
        XenbusDevice {
            role,
            dir: String::from(dir),
            other_dir: String::from(other_dir),
            state: XenbusState::Unknown,
            other: XenbusState::Unknown,
        }
    }

    /// This end's state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The other end's state, as last read.
    pub fn other_state(&self) -> XenbusState {
        self.other
    }

    /// `<dir>/state`.
    pub fn state_path(&self) -> String {
        format!("{}/state", self.dir)
    }

    /// `<other_dir>/state`: the node to watch.
    pub fn other_state_path(&self) -> String {
        format!("{}/state", self.other_dir)
    }

    /// Reads this end's state node (what the toolstack wrote); a missing or unparsable node
    /// reads as Unknown.
    pub fn load(&mut self, s: &mut impl Store) -> XenbusState {
        self.state = read_state(s, &self.state_path());
        self.state
    }

    /// Re-reads the other end's state; `Some(new)` if it changed. A missing or garbage node
    /// (the other end is hostile, or gone) reads as Unknown.
    pub fn refresh_other(&mut self, s: &mut impl Store) -> Option<XenbusState> {
        let now = read_state(s, &self.other_state_path());
        (now != self.other).then(|| {
            self.other = now;
            now
        })
    }

    /// Moves this end to `to` and publishes it: `EINVAL` if the transition is illegal.
    pub fn switch(&mut self, s: &mut impl Store, to: XenbusState) -> Result<(), Errno> {
        if !transition_allowed(self.role, self.state, to) {
            return Err(Errno::EINVAL);
        }
        if to != self.state {
            s.write_node(&self.state_path(), to.as_str().as_bytes())?;
            self.state = to;
        }
        Ok(())
    }

    /// What to do next (see [`next_step`]).
    pub fn next_step(&self) -> Option<Step> {
        next_step(self.role, self.state, self.other)
    }

    /// Takes `step` after the caller did its work: switches to the step's target.
    pub fn complete(&mut self, s: &mut impl Store, step: Step) -> Result<XenbusState, Errno> {
        let to = step.target(self.role);
        self.switch(s, to)?;
        Ok(to)
    }
}

fn read_state(s: &mut impl Store, path: &str) -> XenbusState {
    match s.read_node(path) {
        Ok(v) => core::str::from_utf8(&v).ok().and_then(XenbusState::parse).unwrap_or(XenbusState::Unknown),
        Err(_) => XenbusState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use XenbusState::*;

    #[derive(Default)]
    struct MapStore(BTreeMap<String, Vec<u8>>, u32);

    impl Store for MapStore {
        fn read_node(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
            self.0.get(path).cloned().ok_or(Errno::ENOENT)
        }
        fn write_node(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
            self.1 += 1;
            self.0.insert(path.into(), value.to_vec());
            Ok(())
        }
    }

    const FE: &str = "/local/domain/1/device/vfoo/0";
    const BE: &str = "/local/domain/0/backend/vfoo/1/0";

    fn pair() -> (MapStore, XenbusDevice, XenbusDevice) {
        let mut s = MapStore::default();
        s.write_node(&format!("{FE}/state"), b"1").unwrap();
        s.write_node(&format!("{BE}/state"), b"1").unwrap();
        let mut fe = XenbusDevice::new(Role::Frontend, FE, BE);
        let mut be = XenbusDevice::new(Role::Backend, BE, FE);
        fe.load(&mut s);
        be.load(&mut s);
        (s, fe, be)
    }

    /// Lets both ends react to each other (as their watches would make them) until neither
    /// has anything to do. Returns the rounds taken.
    fn settle(s: &mut MapStore, a: &mut XenbusDevice, b: &mut XenbusDevice) -> usize {
        for round in 0..20 {
            let mut moved = false;
            for d in [&mut *a, &mut *b] {
                d.refresh_other(s);
                if let Some(step) = d.next_step() {
                    d.complete(s, step).unwrap();
                    moved = true;
                }
            }
            if !moved {
                return round;
            }
        }
        panic!("the handshake does not settle");
    }

    #[test]
    fn both_ends_connect() {
        let (mut s, mut fe, mut be) = pair();
        assert_eq!((fe.state(), be.state()), (Initialising, Initialising));
        assert_eq!(fe.next_step(), None, "the frontend waits for the backend");
        settle(&mut s, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Connected, Connected));
        assert_eq!(s.0[&format!("{FE}/state")], b"4");
        assert_eq!(s.0[&format!("{BE}/state")], b"4");
    }

    #[test]
    fn either_end_can_tear_down() {
        for frontend_leaves in [true, false] {
            let (mut s, mut fe, mut be) = pair();
            settle(&mut s, &mut fe, &mut be);
            let leaver = if frontend_leaves { &mut fe } else { &mut be };
            leaver.switch(&mut s, Closing).unwrap();
            settle(&mut s, &mut fe, &mut be);
            assert_eq!((fe.state(), be.state()), (Closed, Closed));
            // Closed ends can start over.
            fe.switch(&mut s, Initialising).unwrap();
        }
    }

    /// Linux's order when its frontend leaves: the backend follows to Closing and stays there
    /// until the frontend is Closed (a frontend shutting down waits to see Closing).
    #[test]
    fn the_backend_stays_closing_until_the_frontend_is_closed() {
        let (mut s, mut fe, mut be) = pair();
        settle(&mut s, &mut fe, &mut be);
        fe.switch(&mut s, Closing).unwrap();
        be.refresh_other(&mut s);
        assert_eq!(be.next_step(), Some(Step::Close));
        be.complete(&mut s, Step::Close).unwrap();
        assert_eq!(be.next_step(), None, "the backend waits in Closing for the frontend");
        assert_eq!(s.0[&format!("{BE}/state")], b"5");
        fe.refresh_other(&mut s);
        assert_eq!(fe.next_step(), Some(Step::Closed));
        fe.complete(&mut s, Step::Closed).unwrap();
        be.refresh_other(&mut s);
        assert_eq!(be.next_step(), Some(Step::Closed));
    }

    #[test]
    fn illegal_transitions_are_refused_and_not_written() {
        let (mut s, mut fe, mut be) = pair();
        let writes = s.1;
        assert_eq!(fe.switch(&mut s, InitWait), Err(Errno::EINVAL), "InitWait is the backend's");
        assert_eq!(be.switch(&mut s, Initialised), Err(Errno::EINVAL), "Initialised is the frontend's");
        assert_eq!(be.switch(&mut s, Connected), Err(Errno::EINVAL), "backend skips InitWait");
        assert_eq!(be.switch(&mut s, Unknown), Err(Errno::EINVAL));
        assert_eq!(s.1, writes);
        be.switch(&mut s, Initialising).unwrap();
        assert_eq!(s.1, writes, "rewriting the same state writes nothing");
        assert!(!transition_allowed(Role::Frontend, Closed, Connected));
        assert!(!transition_allowed(Role::Backend, Closed, Closing));
        assert!(transition_allowed(Role::Frontend, Connected, Reconfiguring));
        assert!(transition_allowed(Role::Frontend, Reconfigured, Connected));
    }

    #[test]
    fn hostile_other_end_reads_as_unknown() {
        let (mut s, mut fe, _) = pair();
        for junk in [&b"9"[..], b"-1", b"4x", b"", b"\xff"] {
            s.0.insert(format!("{BE}/state"), junk.to_vec());
            fe.refresh_other(&mut s);
            assert_eq!(fe.other_state(), Unknown);
            assert_eq!(fe.next_step(), None);
        }
        s.0.remove(&format!("{BE}/state"));
        assert_eq!(fe.refresh_other(&mut s), None, "still Unknown: no change");
    }

    fn any_state() -> impl Strategy<Value = XenbusState> {
        (0u32..9).prop_map(|v| XenbusState::from_u32(v).unwrap())
    }

    proptest! {
        /// Whatever the other end claims, the policy never asks for an illegal transition.
        #[test]
        fn policy_only_asks_for_legal_moves(own in any_state(), other in any_state(), fe: bool) {
            let role = if fe { Role::Frontend } else { Role::Backend };
            if let Some(step) = next_step(role, own, other) {
                prop_assert!(transition_allowed(role, own, step.target(role)),
                    "{role:?} {own:?} -> {:?} (other {other:?})", step.target(role));
                prop_assert_ne!(step.target(role), own);
            }
        }

        /// A frontend following the policy against a backend that jumps around arbitrarily
        /// only ever publishes legal transitions.
        #[test]
        fn random_peer_walk(walk in proptest::collection::vec(any_state(), 1..30)) {
            let (mut s, mut fe, _) = pair();
            for st in walk {
                s.0.insert(format!("{BE}/state"), st.as_str().as_bytes().to_vec());
                fe.refresh_other(&mut s);
                let before = fe.state();
                if let Some(step) = fe.next_step() {
                    fe.complete(&mut s, step).unwrap();
                    prop_assert!(transition_allowed(Role::Frontend, before, fe.state()));
                }
            }
        }
    }
}
