//! The hypervisor's trace buffer: compact records of hypercalls, event sends and deliveries,
//! vCPU switches and guest exceptions (`hypercall_abi::microvisor::trace::Record`), encoded
//! with postcard and COBS-framed into one preallocated buffer, drained to the second serial
//! port when the machine stops. Off unless `trace=1` is on the hypervisor command line; when
//! off, recording is a single predictable branch on paths that are not the hypercall fast
//! path (a traced boot enters hypercalls through the general dispatcher instead).

use alloc::vec::Vec;
use hypercall_abi::microvisor::trace::Record;

/// Default buffer size: ~100k records.
pub const DEFAULT_CAPACITY: usize = 4 << 20;

/// The buffer.
#[derive(Default)]
pub struct Tracer {
    enabled: bool,
    buf: Vec<u8>,
    lost: u64,
}

impl Tracer {
    /// A tracer recording into `capacity` bytes, starting with the TSC rate.
    pub fn enabled(capacity: usize, tsc_hz: u64) -> Tracer {
        let mut t = Tracer { enabled: true, buf: Vec::with_capacity(capacity), lost: 0 };
        t.record(&Record::Start { tsc_hz });
        t
    }

    /// True if recording.
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.enabled
    }

    /// Appends a record, or counts it lost when the buffer is full.
    #[inline]
    pub fn record(&mut self, r: &Record) {
        if !self.enabled {
            return;
        }
        let mut scratch = [0u8; 64];
        match postcard::to_slice_cobs(r, &mut scratch) {
            Ok(bytes) if self.buf.len() + bytes.len() <= self.buf.capacity() => {
                self.buf.extend_from_slice(bytes)
            }
            _ => self.lost += 1,
        }
    }

    /// Everything recorded, with a final `Lost` record if any were dropped; recording stops.
    pub fn finish(&mut self) -> &[u8] {
        if self.enabled && self.lost > 0 {
            let lost = self.lost;
            let mut scratch = [0u8; 64];
            if let Ok(bytes) = postcard::to_slice_cobs(&Record::Lost { count: lost }, &mut scratch) {
                // The buffer may be full: the last record may replace nothing, so make room.
                self.buf.reserve(bytes.len());
                self.buf.extend_from_slice(bytes);
            }
        }
        self.enabled = false;
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_cobs_frames() {
        let mut t = Tracer::enabled(1 << 12, 1_000);
        t.record(&Record::Hypercall { tsc: 5, vcpu: (1, 0), nr: 17, a1: 0 });
        t.record(&Record::HypercallDone { tsc: 9, vcpu: (1, 0), nr: 17, ret: 0x40013 });
        let mut bytes = t.finish().to_vec();
        let mut out = Vec::new();
        for frame in bytes.split_mut(|&b| b == 0).filter(|f| !f.is_empty()) {
            let mut f = frame.to_vec();
            f.push(0);
            out.push(postcard::from_bytes_cobs::<Record>(&mut f).unwrap());
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Record::Start { tsc_hz: 1_000 });
        assert_eq!(out[2], Record::HypercallDone { tsc: 9, vcpu: (1, 0), nr: 17, ret: 0x40013 });
    }

    #[test]
    fn full_buffer_counts_lost_records_and_disabled_records_nothing() {
        let mut t = Tracer::enabled(16, 1);
        for i in 0..10 {
            t.record(&Record::EventSend { tsc: i, dom: 0, port: 1 });
        }
        assert!(t.lost > 0);
        let mut off = Tracer::default();
        off.record(&Record::EventSend { tsc: 1, dom: 0, port: 1 });
        assert!(off.finish().is_empty());
    }
}
