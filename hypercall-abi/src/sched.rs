//! `sched_op` (`public/sched.h`): yielding, blocking, polling and shutting down a domain.
//! The shutdown reason is what the toolstack and the tests see when a guest ends, so it has
//! a printable [`shutdown::name`].

use crate::types::DomId;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `SCHEDOP_*` sub-operations of `sched_op`.
pub mod op {
    pub const YIELD: u32 = 0;
    /// Block until an event is pending; atomically clears the upcall mask first.
    pub const BLOCK: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    pub const POLL: u32 = 3;
    pub const REMOTE_SHUTDOWN: u32 = 4;
    pub const SHUTDOWN_CODE: u32 = 5;
    pub const WATCHDOG: u32 = 6;
    pub const PIN_OVERRIDE: u32 = 7;
}

/// `SHUTDOWN_*` reasons.
pub mod shutdown {
    pub const POWEROFF: u32 = 0;
    pub const REBOOT: u32 = 1;
    pub const SUSPEND: u32 = 2;
    pub const CRASH: u32 = 3;
    pub const WATCHDOG: u32 = 4;
    pub const SOFT_RESET: u32 = 5;
    /// Highest defined reason (`SHUTDOWN_MAX`).
    pub const MAX: u32 = SOFT_RESET;

    /// The reason as the toolstack prints it ("poweroff", "crash", ...); "unknown" otherwise.
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            POWEROFF => "poweroff",
            REBOOT => "reboot",
            SUSPEND => "suspend",
            CRASH => "crash",
            WATCHDOG => "watchdog",
            SOFT_RESET => "soft_reset",
            _ => "unknown",
        }
    }
}

/// `struct sched_shutdown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedShutdown {
    /// [`shutdown`] reason.
    pub reason: u32,
}
assert_layout!(SchedShutdown, size = 4, reason = 0);

/// `struct sched_poll`: block until one of `ports` is pending or `timeout` passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedPoll {
    /// Guest handle of an `evtchn_port_t` array.
    pub ports: u64,
    pub nr_ports: u32,
    pub _pad: u32,
    /// Absolute system time in ns; 0 means no timeout.
    pub timeout: u64,
}
assert_layout!(SchedPoll, size = 24, ports = 0, nr_ports = 8, timeout = 16);

/// `struct sched_remote_shutdown`: a privileged domain shuts another one down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedRemoteShutdown {
    pub domain_id: DomId,
    pub _pad: u16,
    /// [`shutdown`] reason.
    pub reason: u32,
}
assert_layout!(SchedRemoteShutdown, size = 8, domain_id = 0, reason = 4);

/// `struct sched_watchdog`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedWatchdog {
    /// 0 allocates a new watchdog; otherwise the id to arm (timeout > 0) or destroy (0).
    pub id: u32,
    /// Seconds.
    pub timeout: u32,
}
assert_layout!(SchedWatchdog, size = 8, id = 0, timeout = 4);

/// `struct sched_pin_override`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedPinOverride {
    /// Physical CPU, or -1 to undo the override.
    pub pcpu: i32,
}
assert_layout!(SchedPinOverride, size = 4, pcpu = 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_names() {
        assert_eq!(shutdown::name(shutdown::POWEROFF), "poweroff");
        assert_eq!(shutdown::name(shutdown::CRASH), "crash");
        assert_eq!(shutdown::name(shutdown::SOFT_RESET), "soft_reset");
        assert_eq!(shutdown::name(shutdown::MAX + 1), "unknown");
        assert_eq!(shutdown::name(u32::MAX), "unknown");
    }
}
