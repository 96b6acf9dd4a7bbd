//! Kernel command-line options (`start_info.cmd_line`): whitespace-separated `key=value`
//! words or bare flags. The test guest picks its scenario here and dom0 its demo length, so
//! parsing is strict about numbers: a malformed value is reported, never silently defaulted.

/// The value of the last `key=value` word for `key` (later words override earlier ones, as
/// on Linux), or `None` if there is none.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// True if `flag` appears as a bare word (or as `flag=1|yes|on|true`).
pub fn flag(cmdline: &str, name: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == name)
        || get(cmdline, name).is_some_and(|v| matches!(v, "1" | "yes" | "on" | "true"))
}

/// Why a numeric option was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadNumber<'a> {
    /// The value is not a decimal or `0x` hexadecimal u64.
    NotANumber(&'a str),
    /// The value is outside the range the option accepts.
    OutOfRange(u64),
}

/// Parses a decimal or `0x`-prefixed hexadecimal u64, with an optional `_` digit separator.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || digits.starts_with('_') {
        return None;
    }
    let mut v: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = u64::from(c.to_digit(radix)?);
        v = v.checked_mul(radix.into())?.checked_add(d)?;
    }
    Some(v)
}

/// The numeric option `key`, `default` when absent, or an error when present but malformed
/// or outside `min..=max`.
pub fn get_u64<'a>(
    cmdline: &'a str,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, BadNumber<'a>> {
    match get(cmdline, key) {
        None => Ok(default),
        Some(v) => {
            let n = parse_u64(v).ok_or(BadNumber::NotANumber(v))?;
            if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(BadNumber::OutOfRange(n))
            }
        }
    }
}

/// [`get_u64`], or `default` with a line saying why (prefixed `who: `) when the option is
/// present but malformed or out of range.
#[cfg(not(test))]
pub fn get_u64_or(cmdline: &str, who: &str, key: &str, default: u64, min: u64, max: u64) -> u64 {
    get_u64(cmdline, key, default, min, max).unwrap_or_else(|e| {
        crate::println!("{who}: ignoring {key}= ({e:?}), using {default}");
        default
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_options_and_flags() {
        let c = "scenario=trap-pf  iters=500 verbose x=1=2";
        assert_eq!(get(c, "scenario"), Some("trap-pf"));
        assert_eq!(get(c, "iters"), Some("500"));
        assert_eq!(get(c, "missing"), None);
        // Only the first '=' splits.
        assert_eq!(get(c, "x"), Some("1=2"));
        assert!(flag(c, "verbose"));
        assert!(!flag(c, "scenario"));
        assert!(!flag(c, "verb"));
        assert_eq!(get("a=1 a=2", "a"), Some("2"));
        assert_eq!(get("", "a"), None);
        assert_eq!(get("scenario=", "scenario"), Some(""));
        assert!(flag("debug=on", "debug"));
        assert!(!flag("debug=off", "debug"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("100_000"), Some(100_000));
        assert_eq!(parse_u64("0x1f"), Some(31));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("12a"), None);
        assert_eq!(parse_u64("_1"), None);
        assert_eq!(get_u64("iters=5", "iters", 7, 1, 10), Ok(5));
        assert_eq!(get_u64("", "iters", 7, 1, 10), Ok(7));
        assert_eq!(get_u64("iters=0", "iters", 7, 1, 10), Err(BadNumber::OutOfRange(0)));
        assert_eq!(get_u64("iters=lots", "iters", 7, 1, 10), Err(BadNumber::NotANumber("lots")));
    }

    proptest! {
        #[test]
        fn decimal_and_hex_round_trip(n: u64) {
            let dec = format!("{n}");
            let hex = format!("{n:#x}");
            prop_assert_eq!(parse_u64(&dec), Some(n));
            prop_assert_eq!(parse_u64(&hex), Some(n));
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,64}", k in "[a-z]{1,6}") {
            let _ = get(&s, &k);
            let _ = flag(&s, &k);
            let _ = get_u64(&s, &k, 0, 0, u64::MAX);
        }
    }
}
