//! Framing over a simulated BLE link (ATT MTU 23 and 185) with reordering, duplication,
//! truncation and loss: every message comes out whole, or as a clean error, never a panic.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

mod common;

use common::Rng;
use edge_mobile_bridge::frame::{Fragmenter, FrameError, MAX_MESSAGE, Reassembler, ble_max_frame};

#[derive(Debug, Default)]
struct Stats {
    sent: usize,
    delivered: usize,
    errors: usize,
}

/// Faults, each in percent per frame.
#[derive(Clone, Copy)]
struct Faults {
    drop: usize,
    truncate: usize,
    duplicate: usize,
    reorder: usize,
}

const NONE: Faults = Faults {
    drop: 0,
    truncate: 0,
    duplicate: 0,
    reorder: 0,
};

fn message_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0 => MAX_MESSAGE,
        1..=10 => 1 + rng.below(4000),
        _ => 1 + rng.below(300),
    }
}

fn run(att_mtu: u16, seed: u64, messages: usize, faults: Faults) -> Stats {
    let max_frame = ble_max_frame(att_mtu);
    let mut rng = Rng::new(seed);
    let mut tx = Fragmenter::new(max_frame).expect("new");
    let mut rx = Reassembler::default();
    let mut recent: Vec<Vec<u8>> = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut stats = Stats::default();
    for _ in 0..messages {
        let len = message_len(&mut rng);
        let msg = rng.bytes(len);
        let frames = tx.fragment(&msg).expect("fragment");
        assert!(frames.iter().all(|f| f.len() <= max_frame));
        recent.push(msg);
        if recent.len() > 4 {
            recent.remove(0);
        }
        stats.sent += 1;

        // The link: frames held back from the last round go first, then this message's.
        let mut wire = std::mem::take(&mut held);
        for mut f in frames {
            if rng.chance(faults.drop) {
                continue;
            }
            if rng.chance(faults.truncate) {
                f.truncate(rng.below(f.len()));
            }
            if rng.chance(faults.duplicate) {
                wire.push(f.clone());
            }
            wire.push(f);
        }
        for i in 1..wire.len() {
            if rng.chance(faults.reorder) {
                wire.swap(i - 1, i);
            }
        }
        if faults.reorder > 0 && rng.chance(faults.reorder) && !wire.is_empty() {
            // Hold the tail back: it arrives after the next message's first frames.
            let keep = rng.below(wire.len());
            held = wire.split_off(keep);
        }

        for f in &wire {
            match rx.push(f) {
                Ok(Some(m)) => {
                    assert!(
                        recent.contains(&m),
                        "seed {seed}: a message came out that was never sent whole ({} bytes)",
                        m.len()
                    );
                    stats.delivered += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    // Every error is a typed one and leaves the reassembler usable.
                    assert!(!matches!(e, FrameError::FrameSize { .. }), "{e}");
                    stats.errors += 1;
                }
            }
        }
    }
    stats
}

#[test]
fn a_clean_link_delivers_every_message() {
    for mtu in [23, 185] {
        let stats = run(mtu, 1, 300, NONE);
        assert_eq!(stats.delivered, stats.sent, "MTU {mtu}: {stats:?}");
        assert_eq!(stats.errors, 0);
    }
}

#[test]
fn a_faulty_link_gives_whole_messages_or_clean_errors() {
    let faults = Faults {
        drop: 1,
        truncate: 1,
        duplicate: 1,
        reorder: 1,
    };
    for mtu in [23, 185] {
        for seed in 0..8 {
            let stats = run(mtu, seed, 400, faults);
            assert!(
                stats.errors > 0,
                "MTU {mtu} seed {seed}: no fault hit: {stats:?}"
            );
            assert!(
                stats.delivered > 0,
                "MTU {mtu} seed {seed}: nothing got through: {stats:?}"
            );
        }
    }
}

#[test]
fn a_hostile_link_never_panics_the_reassembler() {
    let faults = Faults {
        drop: 20,
        truncate: 20,
        duplicate: 20,
        reorder: 30,
    };
    for mtu in [23, 185] {
        for seed in 100..104 {
            run(mtu, seed, 300, faults);
        }
    }
    // Pure noise, interleaved with real frames.
    let mut rng = Rng::new(7);
    let mut rx = Reassembler::default();
    let mut tx = Fragmenter::new(ble_max_frame(23)).expect("new");
    for _ in 0..20_000 {
        if rng.chance(10) {
            let len = 1 + rng.below(100);
            for f in tx.fragment(&rng.bytes(len)).expect("fragment") {
                let _ = rx.push(&f);
            }
        }
        let len = rng.below(40);
        let noise = rng.bytes(len);
        let _ = rx.push(&noise);
    }
}
