//! The one reader of `key=value` figures in serial logs, shared by the runner and the tests:
//! dom0's and the guests' structured lines (`dom0: d1/vbd51712: disconnected (...) requests=…`,
//! `(d1) rng-read: bytes=…`), `BENCH`/`BENCHHIST` records, the fuzzer's and the balloon's
//! figures. A field is one whitespace-separated `key=value` token; keys compare whole, so
//! `calls=` is never read out of `hypercalls=`. ARCHITECTURE.md ("What tests read from the
//! serial log") documents the lines.

use std::str::FromStr;

/// Every `key=value` token of `text`, in order (other words are skipped).
pub fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_whitespace().filter_map(|w| w.split_once('='))
}

/// The value of the first `key=` field of `line`.
pub fn get<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    pairs(line).find_map(|(k, v)| (k == key).then_some(v))
}

/// The value of the first `key=` field of `line`, parsed (a number, usually).
pub fn num<T: FromStr>(line: &str, key: &str) -> Option<T> {
    get(line, key)?.parse().ok()
}

/// What follows the first `marker` in `line` (the fields of a record such as `BENCH `).
pub fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let l = "(XEN) fuzz: progress seed=7 hypercalls=250 calls=100";
        assert_eq!(num::<u64>(l, "calls"), Some(100));
        assert_eq!(num::<u64>(l, "hypercalls"), Some(250));
        assert_eq!(num::<u64>(l, "seed"), Some(7));
        assert_eq!(num::<u64>(l, "alls"), None);
        assert_eq!(get(l, "nope"), None);
    }

    #[test]
    fn values_are_whole_tokens() {
        let l = "dom0: d1/vrng0: disconnected (virtio-rng 00:05.0) requests=3 bytes=65536 errors=0";
        assert_eq!(pairs(l).count(), 3);
        assert_eq!(num::<u64>(l, "bytes"), Some(65536));
        assert_eq!(get("BALLOON down free_delta=-12 name=x", "free_delta"), Some("-12"));
        assert_eq!(num::<i64>("BALLOON down free_delta=-12", "free_delta"), Some(-12));
        // Not a number: no figure rather than a wrong one.
        assert_eq!(num::<u64>("a=12,", "a"), None);
        assert_eq!(num::<u64>("a=", "a"), None);
    }

    #[test]
    fn after_a_marker() {
        assert_eq!(after("(d1) BENCH name=x n=1", "BENCH "), Some("name=x n=1"));
        assert_eq!(after("nothing", "BENCH "), None);
    }
}
