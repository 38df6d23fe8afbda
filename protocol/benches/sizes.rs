//! Sizes, not times. `cargo bench -p pinmesh-protocol --bench sizes`.
//!
//! - encoded size of one pin entry (CIDv1 sha2-256, a short name, no metadata): target ≤ 80 B;
//! - in-memory bytes per pin of a 1M-pin `MemPinset`, counted by a global allocator (requested
//!   bytes) and as resident-set growth (what malloc really took): target ≤ 130 B.

// A counting global allocator is the one place unsafe is needed: it forwards to `System`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Dot, PinEntry, PinSpec, Version, codec};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    // `cargo bench` passes `--bench`; with a filter that excludes us, do nothing.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"sizes".contains(a.as_str()))
    {
        return;
    }
    let actor = ActorId::derive(b"benchmark", 1);
    let entry = PinEntry {
        cid: sim_cid(1),
        versions: vec![Version {
            dot: Dot::new(actor, 123_456),
            at: 1_764_000_000_000,
            spec: PinSpec::named("pin-123456"),
        }],
    };
    let encoded = codec::encoded_len(&entry);
    println!(
        "pin_entry_encoded_bytes: {encoded} (CID {} B, target <= 80)",
        sim_cid(1).to_bytes().len()
    );

    const PINS: u64 = 1_000_000;
    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let state = common::state_of(actor, PINS);
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    println!(
        "memory_per_pin_heap_bytes: {:.1} at {PINS} pins (target <= 130)",
        heap as f64 / PINS as f64
    );
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        println!(
            "memory_per_pin_rss_bytes: {:.1} at {PINS} pins",
            (after - before) as f64 / PINS as f64
        );
    }
    assert_eq!(state.len() as u64, PINS);
}
