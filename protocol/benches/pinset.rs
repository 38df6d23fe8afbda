//! Join costs at scale. `cargo bench -p pinmesh-protocol --bench pinset`.
//!
//! - `delta_join_1m`: one delta (an update of an existing pin by another replica) joined into a
//!   1M-pin state. Target ≤ 2 µs.
//! - `full_join_1m_1pct`: join of two 1M-pin states that differ in 1% of their pins (updates,
//!   removals and new pins made on one side). Target ≤ 0.5 s.
//! - `batch_decode_verify`: decode and verify a signed batch of 256 pins (per batch).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Delta, DeltaBatch, Dot, Gossip, MemPinset, Op, PinSpec, codec};

const PINS: u64 = 1_000_000;

fn base_state() -> MemPinset {
    common::state_of(ActorId(1), PINS)
}

/// `n` deltas from actor 2, each updating a distinct existing pin of `state` (as a replica
/// holding the same state would make them).
fn updates(state: &MemPinset, n: u64, first_counter: u64) -> Vec<Delta> {
    let actor = ActorId(2);
    (0..n)
        .map(|i| {
            let cid = sim_cid((i * 7919) % PINS);
            let spec = PinSpec::named(format!("upd-{i}"));
            let op = Op::Pin {
                at: 1_800_000_000_000 + i,
                spec,
            };
            Delta::new(
                Dot::new(actor, first_counter + i),
                cid,
                op,
                &state.versions(&cid),
            )
        })
        .collect()
}

fn delta_join(c: &mut Criterion) {
    let mut state = base_state();
    let mut next = 1;
    c.bench_function("delta_join_1m", |b| {
        b.iter_custom(|iters| {
            let deltas = updates(&state, iters, next);
            next += iters;
            let start = Instant::now();
            for d in &deltas {
                black_box(state.apply(d));
            }
            start.elapsed()
        })
    });
}

fn full_join(c: &mut Criterion) {
    let a = base_state();
    let mut b = a.clone();
    // 1% of the pins differ: a third updated, a third removed, a third new.
    let actor = ActorId(3);
    let differ = PINS / 100;
    for i in 0..differ {
        let dot = Dot::new(actor, i + 1);
        let op = match i % 3 {
            0 => Op::Pin {
                at: 1_900_000_000_000,
                spec: PinSpec::named("changed"),
            },
            1 => Op::Unpin,
            _ => Op::Pin {
                at: 1_900_000_000_000,
                spec: PinSpec::named("new"),
            },
        };
        let cid = if i % 3 == 2 {
            sim_cid(PINS + i)
        } else {
            sim_cid(i * 97 % PINS)
        };
        b.local(dot, cid, op);
    }
    let mut group = c.benchmark_group("full_join_1m_1pct");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("join", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut left| {
                left.join(&b);
                left
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn batch_decode_verify(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[1; 32]);
    let actor = ActorId::derive(&key.verifying_key().to_bytes(), 1);
    let mut state = MemPinset::new();
    let deltas: Vec<Delta> = (0..256)
        .map(|i| {
            let op = Op::Pin {
                at: 1_764_000_000_000,
                spec: PinSpec::named(format!("pin-{i:06}")),
            };
            state.local(Dot::new(actor, i + 1), sim_cid(i), op)
        })
        .collect();
    let bytes = codec::encode_gossip(&Gossip::DeltaBatch(DeltaBatch::sign(
        &key, "bench", 1, &deltas,
    )));
    c.bench_function("batch_decode_verify_256", |b| {
        b.iter(|| match codec::decode_gossip(black_box(&bytes)) {
            Ok(Gossip::DeltaBatch(batch)) => batch.verify("bench").is_ok(),
            _ => false,
        })
    });
}

criterion_group!(benches, delta_join, full_join, batch_decode_verify);
criterion_main!(benches);
