//! XenBus device states (`public/io/xenbus.h`): the handshake both ends of a split driver walk
//! through, each publishing its state as a decimal number in its `state` xenstore node.

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    /// Backend: waiting for information from the frontend (features published).
    InitWait = 2,
    /// Frontend: ring and event channel published.
    Initialised = 3,
    Connected = 4,
    /// Tearing down.
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    /// The state with number `v`, if any.
    pub const fn from_u32(v: u32) -> Option<XenbusState> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// The number.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The value written to a `state` node ("4" for Connected).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "0",
            Self::Initialising => "1",
            Self::InitWait => "2",
            Self::Initialised => "3",
            Self::Connected => "4",
            Self::Closing => "5",
            Self::Closed => "6",
            Self::Reconfiguring => "7",
            Self::Reconfigured => "8",
        }
    }

    /// Xen's name ("Connected"), for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Initialising => "Initialising",
            Self::InitWait => "InitWait",
            Self::Initialised => "Initialised",
            Self::Connected => "Connected",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
            Self::Reconfiguring => "Reconfiguring",
            Self::Reconfigured => "Reconfigured",
        }
    }

    /// Parses a `state` node's value: a decimal number, surrounding ASCII whitespace and one
    /// trailing NUL tolerated. Anything else (signs, other numbers, junk) is `None`.
    pub fn parse(s: &str) -> Option<XenbusState> {
        let t = s.strip_suffix('\0').unwrap_or(s).trim_ascii();
        if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse::<u32>().ok().and_then(Self::from_u32)
    }

    /// True once a device is going away (Closing or Closed).
    pub const fn is_closing(self) -> bool {
        matches!(self, Self::Closing | Self::Closed)
    }
}

impl core::fmt::Display for XenbusState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for v in 0..=8 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s.as_u32(), v);
            assert_eq!(XenbusState::parse(s.as_str()), Some(s));
        }
        assert_eq!(XenbusState::from_u32(9), None);
        assert_eq!(XenbusState::parse(" 4\n"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse("6\0"), Some(XenbusState::Closed));
        for bad in ["", "-1", "+4", "4x", "9", "99999999999999999999", "0x4", "four"] {
            assert_eq!(XenbusState::parse(bad), None, "{bad:?}");
        }
        assert!(XenbusState::Closing.is_closing() && !XenbusState::Connected.is_closing());
        assert_eq!(XenbusState::InitWait.name(), "InitWait");
    }

    proptest! {
        #[test]
        fn parse_accepts_only_states(s in ".{0,12}") {
            if let Some(st) = XenbusState::parse(&s) {
                prop_assert!(st.as_u32() <= 8);
            }
        }
    }
}
