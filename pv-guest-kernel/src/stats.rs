//! Order statistics of latency samples, for the `BENCH` lines the host benchmark harness
//! parses (min / median / p99 use the nearest-rank definition, so every figure is a sample
//! that was actually measured).

/// Nearest-rank percentile `p` (0..=100) of `sorted` (ascending); `None` if empty.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = u64::from(p.min(100));
    let n = sorted.len() as u64;
    // rank = ceil(p/100 * n), at least 1.
    let rank = (p * n).div_ceil(100).max(1);
    sorted.get((rank - 1) as usize).copied()
}

/// Summary of a sample set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub min: u64,
    pub median: u64,
    pub p99: u64,
    pub max: u64,
}

/// Sorts `samples` in place and summarises them; `None` if there are none.
pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    samples.sort_unstable();
    Some(Summary {
        n: samples.len(),
        min: *samples.first()?,
        median: percentile(samples, 50)?,
        p99: percentile(samples, 99)?,
        max: *samples.last()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&v, 0), Some(1));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        let mut s = [5, 1, 9, 3];
        let sum = summarize(&mut s).unwrap();
        assert_eq!((sum.n, sum.min, sum.median, sum.p99, sum.max), (4, 1, 3, 9, 9));
        assert_eq!(summarize(&mut []), None);
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_samples(mut v in proptest::collection::vec(any::<u64>(), 1..300)) {
            let s = summarize(&mut v).unwrap();
            prop_assert!(s.min <= s.median && s.median <= s.p99 && s.p99 <= s.max);
            prop_assert!(v.contains(&s.median) && v.contains(&s.p99));
            // At least 99% of samples are <= p99, and at least half are <= the median.
            let le = |x: u64| v.iter().filter(|&&y| y <= x).count() * 100;
            prop_assert!(le(s.p99) >= 99 * v.len());
            prop_assert!(le(s.median) >= 50 * v.len());
        }
    }
}
