//! Hostile bytes: random, truncated, bit-flipped or oversized input to every decoder gives a
//! typed error or a value, never a panic. Truncated messages are always errors.

use ed25519_dalek::SigningKey;
use pinmesh_protocol::codec::{self, DecodeError};
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{
    ActorId, DeltaBatch, Dot, Gossip, MemPinset, Op, PinSpec, Request, Response,
};
use proptest::prelude::*;

fn valid_messages() -> Vec<Vec<u8>> {
    let key = SigningKey::from_bytes(&[3; 32]);
    let actor = ActorId::derive(&key.verifying_key().to_bytes(), 1);
    let mut pins = MemPinset::new();
    let deltas: Vec<_> = (1..=5)
        .map(|i| {
            let op = if i % 3 == 0 {
                Op::Unpin
            } else {
                Op::Pin {
                    at: i,
                    spec: PinSpec::named(format!("p{i}")),
                }
            };
            pins.local(Dot::new(actor, i), sim_cid(i % 2), op)
        })
        .collect();
    let batch = DeltaBatch::sign(&key, "c", 1, &deltas);
    vec![
        codec::encode_gossip(&Gossip::DeltaBatch(batch.clone())),
        codec::encode_request(
            codec::WIRE_VERSION,
            &Request::GetDeltas {
                origin: actor,
                from: 1,
                to: 9,
            },
        ),
        codec::encode_response(
            codec::WIRE_VERSION,
            &Response::Deltas {
                batches: vec![batch],
            },
        ),
        codec::encode_entry(&pins.versions(&sim_cid(1))),
    ]
}

fn decode_all(bytes: &[u8]) -> [bool; 4] {
    [
        codec::decode_gossip(bytes).is_ok(),
        codec::decode_request(bytes).is_ok(),
        codec::decode_response(bytes).is_ok(),
        codec::decode_entry(bytes).is_ok(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
        let mut enveloped = vec![0x82, 0x01];
        enveloped.extend(&bytes);
        decode_all(&enveloped);
    }

    #[test]
    fn truncations_are_errors(which in 0usize..3, cut in any::<prop::sample::Index>()) {
        let message = &valid_messages()[which];
        let cut = cut.index(message.len());
        let truncated = &message[..cut];
        let decoded = match which {
            0 => codec::decode_gossip(truncated).err(),
            1 => codec::decode_request(truncated).err(),
            _ => codec::decode_response(truncated).err(),
        };
        prop_assert!(decoded.is_some(), "a {cut}-byte prefix decoded");
    }

    #[test]
    fn bit_flips_never_panic(which in 0usize..4, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut message = valid_messages()[which].clone();
        let i = at.index(message.len());
        message[i] ^= 1 << bit;
        decode_all(&message);
        // A flipped batch that still verifies must mean exactly the original batch (CBOR lets
        // a byte string pass as the equal text string, for example); it can never change it.
        if let Ok(Gossip::DeltaBatch(b)) = codec::decode_gossip(&message) {
            let original = match codec::decode_gossip(&valid_messages()[which]) {
                Ok(Gossip::DeltaBatch(o)) => o,
                other => panic!("fixture is not a batch: {other:?}"),
            };
            prop_assert!(b.verify("c").is_err() || b == original);
        }
    }
}

#[test]
fn oversized_and_deeply_nested_input_is_rejected() {
    let huge = vec![0x82; codec::MAX_DELTA_BATCH + 1];
    assert!(matches!(
        codec::decode_gossip(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
    // 100k nested arrays: must hit the decoder's depth limit, not the stack.
    let mut nested = vec![0x82, 0x01];
    nested.extend(std::iter::repeat_n(0x81, 100_000));
    assert!(codec::decode_response(&nested[..codec::MAX_REQUEST.min(nested.len())]).is_err());
    assert!(codec::decode_response(&nested).is_err());
    // A byte string claiming 2^63 bytes.
    let lying = [
        0x82, 0x01, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(codec::decode_response(&lying).is_err());
}
