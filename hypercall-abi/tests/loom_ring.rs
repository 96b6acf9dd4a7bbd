//! Model-checks the ring's publication and notification protocol with loom: every interleaving
//! (and every reordering the memory model allows) of a producer and a consumer thread.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p hypercall-abi --test loom_ring --release`.
//! Without `--cfg loom` this file is empty.
//!
//! The property: when a consumer goes idle after its final check, every entry it has not seen
//! was published by a push whose notify check returned true, so the consumer will be woken;
//! and every entry it did see holds exactly the bytes the producer wrote. A control test runs
//! the same protocol over memory whose `fence()` is missing and must find a lost wake-up; another
//! drops the release ordering of index stores and must find a torn entry. They show the model
//! checker can see the bugs those barriers prevent.
#![cfg(loom)]

use hypercall_abi::io::ring::{BackRing, FrontRing, RingMemory, SharedRing, RING_OFFSET};
use loom::sync::atomic::{fence, AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Slots in the modelled ring: small, to keep the state space small.
const SLOTS: usize = 2;
/// Ring area: the header plus `SLOTS` 4-byte slots.
const AREA: usize = RING_OFFSET + SLOTS * 4;

/// Which barriers the memory really provides; the control tests remove one.
#[derive(Clone, Copy)]
struct Barriers {
    /// `fence()` is a full `mb()`.
    full_fence: bool,
    /// `store_u32_release()` orders earlier slot writes before the index (`wmb()`).
    release: bool,
}

const CORRECT: Barriers = Barriers { full_fence: true, release: true };

/// A ring area made of loom atomics, one per 4-byte word. Index words use acquire/release, slot
/// bytes relaxed accesses: a missing barrier in the ring code lets loom read stale slot data.
struct LoomMem {
    words: Vec<AtomicU32>,
    barriers: Barriers,
}

impl LoomMem {
    fn new(barriers: Barriers) -> Self {
        LoomMem { words: (0..AREA / 4).map(|_| AtomicU32::new(0)).collect(), barriers }
    }
}

impl RingMemory for LoomMem {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        self.words[off / 4].load(Ordering::Acquire)
    }
    fn store_u32_release(&self, off: usize, v: u32) {
        let order = if self.barriers.release { Ordering::Release } else { Ordering::Relaxed };
        self.words[off / 4].store(v, order)
    }
    fn fence(&self) {
        if self.barriers.full_fence {
            fence(Ordering::SeqCst)
        }
    }
    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        assert!((off | buf.len()) & 3 == 0, "the model only uses whole words");
        for (i, chunk) in buf.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&self.words[off / 4 + i].load(Ordering::Relaxed).to_le_bytes());
        }
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        assert!((off | data.len()) & 3 == 0, "the model only uses whole words");
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes(chunk.try_into().unwrap());
            self.words[off / 4 + i].store(v, Ordering::Relaxed);
        }
    }
}

/// Requests and responses are 4-byte values, distinct from the zeroed initial memory.
type Front = FrontRing<u32, u32>;
type Back = BackRing<u32, u32>;
const REQUESTS: [u32; 2] = [0xA1, 0xA2];

/// Producer publishes two requests one at a time; consumer drains and goes idle.
/// Returns (requests seen by the consumer, notify result of each publish).
/// Indexes start at `start` (so `u32::MAX` makes them wrap between the two requests).
fn requests_scenario(barriers: Barriers, start: u32) -> (Vec<u32>, Vec<bool>) {
    let mem = Arc::new(LoomMem::new(barriers));
    SharedRing::init_at(&*mem, start);
    let mut front = Front::attach(AREA, start).unwrap();
    let mut back = Back::attach(AREA, start).unwrap();

    let producer = {
        let mem = mem.clone();
        thread::spawn(move || {
            let mut notified = Vec::new();
            for v in REQUESTS {
                front.push_request(&*mem, &v).unwrap();
                notified.push(front.push_requests_and_check_notify(&*mem));
            }
            notified
        })
    };

    // Consumer: the RING_FINAL_CHECK_FOR_REQUESTS loop of a backend.
    let mut seen = Vec::new();
    loop {
        while let Some(r) = back.take_request(&*mem).unwrap() {
            seen.push(r);
        }
        if !back.final_check_for_requests(&*mem).unwrap() {
            break; // idle: waits for an event
        }
    }
    let notified = producer.join().unwrap();
    (seen, notified)
}

/// Checks the no-lost-wake-up property of one execution.
fn check(seen: &[u32], sent: &[u32], notified: &[bool]) {
    assert_eq!(seen, &sent[..seen.len()], "entries arrive intact and in order");
    // One entry per publish: publish i carries entry i. The first entry the consumer did not
    // see must have been announced by a notification.
    if seen.len() < sent.len() {
        assert!(notified[seen.len()], "lost wake-up: consumer idle with entry {} unseen", seen.len());
    }
}

#[test]
fn request_notifications_are_not_lost() {
    loom::model(|| {
        let (seen, notified) = requests_scenario(CORRECT, 0);
        check(&seen, &REQUESTS, &notified);
    });
}

#[test]
fn request_notifications_survive_index_wrap() {
    loom::model(|| {
        let (seen, notified) = requests_scenario(CORRECT, u32::MAX);
        check(&seen, &REQUESTS, &notified);
    });
}

/// Backend answers two pre-published requests one response at a time; the frontend drains
/// responses and goes idle.
#[test]
fn response_notifications_are_not_lost() {
    loom::model(|| {
        let mem = Arc::new(LoomMem::new(CORRECT));
        SharedRing::init(&*mem);
        let mut front = Front::attach(AREA, 0).unwrap();
        let mut back = Back::attach(AREA, 0).unwrap();
        for v in REQUESTS {
            front.push_request(&*mem, &v).unwrap();
        }
        front.push_requests(&*mem);

        let backend = {
            let mem = mem.clone();
            thread::spawn(move || {
                let mut notified = Vec::new();
                while let Some(r) = back.take_request(&*mem).unwrap() {
                    back.push_response(&*mem, &(r + 0x100)).unwrap();
                    notified.push(back.push_responses_and_check_notify(&*mem));
                }
                notified
            })
        };

        let mut seen = Vec::new();
        loop {
            while let Some(r) = front.take_response(&*mem).unwrap() {
                seen.push(r);
            }
            if !front.final_check_for_responses(&*mem).unwrap() {
                break;
            }
        }
        let notified = backend.join().unwrap();
        check(&seen, &[0x1A1, 0x1A2], &notified);
    });
}

/// Control: without the full barrier between publishing an index and reading the peer's event
/// (and between writing the event and re-reading the index) a wake-up can be lost. Loom must
/// find that execution, or the tests above prove nothing.
#[test]
#[should_panic(expected = "lost wake-up")]
fn missing_fence_loses_a_wakeup() {
    loom::model(|| {
        let (seen, notified) = requests_scenario(Barriers { full_fence: false, ..CORRECT }, 0);
        check(&seen, &REQUESTS, &notified);
    });
}

/// Control: if publishing the producer index did not order the slot write before it, the
/// consumer could copy a slot before its contents arrive.
#[test]
#[should_panic(expected = "entries arrive intact")]
fn missing_release_reads_a_stale_entry() {
    loom::model(|| {
        let (seen, notified) = requests_scenario(Barriers { release: false, ..CORRECT }, 0);
        check(&seen, &REQUESTS, &notified);
    });
}
