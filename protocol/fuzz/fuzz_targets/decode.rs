//! Every decoder on arbitrary bytes: `cargo +nightly fuzz run decode` from `protocol/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinmesh_protocol::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_gossip(data);
    let _ = codec::decode_request(data);
    let _ = codec::decode_response(data);
    let _ = codec::decode_entry(data);
    if let Ok(pinmesh_protocol::Gossip::DeltaBatch(batch)) = codec::decode_gossip(data) {
        let _ = batch.verify("fuzz");
        let _: Vec<_> = batch.deltas().collect();
    }
});
