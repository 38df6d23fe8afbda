//! Golden bytes: the exact encoding of every message type and of a stored entry. A change of
//! encoding is a change of protocol; it must fail here, loudly, and be made on purpose (with a
//! new wire version when old peers could not read it).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use pinmesh_protocol::codec::{self, encode_entry};
use pinmesh_protocol::message::{Key, Sig};
use pinmesh_protocol::{
    ActorId, Cid, Delta, DeltaBatch, Digest, Dot, DotSet, Gossip, MemPinset, Op, PinEntry, PinMode,
    PinSpec, PinStatusEntry, Request, Response, SnapshotChunk, SnapshotHead, Summary, Version,
};
use serde_bytes::ByteBuf;

const CLUSTER: &str = "golden";

fn cid() -> Cid {
    "bafkreidgvpkjawlxz6sffxzwgooowe5yt7i6wsyg236mfoks77nywkptdq"
        .parse()
        .expect("valid CID")
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn actor() -> ActorId {
    ActorId::derive(&key().verifying_key().to_bytes(), 42)
}

fn full_spec() -> PinSpec {
    PinSpec {
        name: "photos".into(),
        mode: PinMode::Direct,
        replication_min: 2,
        replication_max: 3,
        allocations: vec!["12D3KooWExample".into()],
        expire_at: Some(1_900_000_000),
        metadata: BTreeMap::from([("team".to_string(), "ops".to_string())]),
        origins: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    }
}

fn batch() -> DeltaBatch {
    let mut pins = MemPinset::new();
    let a = actor();
    let d1 = pins.local(
        Dot::new(a, 1),
        cid(),
        Op::Pin {
            at: 1_764_000_000_000,
            spec: PinSpec::named("a"),
        },
    );
    let d2 = pins.local(
        Dot::new(a, 2),
        cid(),
        Op::Pin {
            at: 1_764_000_000_001,
            spec: full_spec(),
        },
    );
    let d3 = pins.local(Dot::new(a, 3), cid(), Op::Unpin);
    DeltaBatch::sign(&key(), CLUSTER, 42, &[d1, d2, d3])
}

fn dots() -> DotSet {
    let mut s = DotSet::new();
    s.insert_range(actor(), 1, 3);
    s.insert(Dot::new(ActorId(5), 9));
    s
}

fn summary() -> Summary {
    Summary {
        actor: actor(),
        pins: 12,
        state_digest: Digest([0xab; 32]),
        applied_digest: Digest([0xcd; 32]),
        applied: Some(dots()),
        low_water: vec![(actor(), 1)],
        synced: true,
    }
}

fn version() -> Version {
    Version {
        dot: Dot::new(actor(), 1),
        at: 1_764_000_000_000,
        spec: PinSpec::named("pin-123456"),
    }
}

fn check(what: &str, bytes: &[u8], golden: &str) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, golden, "encoding of {what} changed; actual:\n{hex}");
}

#[test]
fn gossip() {
    let b = batch();
    assert_eq!(b.verify(CLUSTER), Ok(()));
    assert_eq!(
        b.verify("another cluster"),
        Err(pinmesh_protocol::BatchError::BadSignature)
    );
    check(
        "delta batch",
        &codec::encode_gossip(&Gossip::DeltaBatch(b)),
        GOLDEN_BATCH,
    );
    check(
        "beacon",
        &codec::encode_gossip(&Gossip::Beacon(summary())),
        GOLDEN_BEACON,
    );
}

#[test]
fn requests() {
    check(
        "status",
        &codec::encode_request(&Request::Status),
        GOLDEN_REQ_STATUS,
    );
    let get = Request::GetDeltas {
        origin: actor(),
        from: 5,
        to: 900,
    };
    check("get deltas", &codec::encode_request(&get), GOLDEN_REQ_GET);
    let snap = Request::Snapshot {
        snapshot_id: Some(7),
        after: Some(ByteBuf::from(cid().to_bytes())),
        limit: 5000,
    };
    check(
        "snapshot",
        &codec::encode_request(&snap),
        GOLDEN_REQ_SNAPSHOT,
    );
    let status = Request::PinStatus { cids: vec![cid()] };
    check(
        "pin status",
        &codec::encode_request(&status),
        GOLDEN_REQ_PIN_STATUS,
    );
    check(
        "ipfs node",
        &codec::encode_request(&Request::IpfsNode),
        GOLDEN_REQ_IPFS_NODE,
    );
}

#[test]
fn responses() {
    check(
        "status",
        &codec::encode_response(&Response::Status(summary())),
        GOLDEN_RESP_STATUS,
    );
    let deltas = Response::Deltas {
        batches: vec![batch()],
    };
    check(
        "deltas",
        &codec::encode_response(&deltas),
        GOLDEN_RESP_DELTAS,
    );
    let truncated = Response::Truncated {
        origin: actor(),
        first_available: 100,
    };
    check(
        "truncated",
        &codec::encode_response(&truncated),
        GOLDEN_RESP_TRUNCATED,
    );
    let chunk = Response::SnapshotChunk(SnapshotChunk {
        snapshot_id: 7,
        head: Some(SnapshotHead {
            context: dots(),
            applied: dots(),
            pins: 1,
            state_digest: Digest([1; 32]),
        }),
        entries: vec![PinEntry {
            cid: cid(),
            versions: vec![version()],
        }],
        next: None,
    });
    check(
        "snapshot chunk",
        &codec::encode_response(&chunk),
        GOLDEN_RESP_CHUNK,
    );
    let refused = Response::Refused {
        reason: "busy".into(),
    };
    check(
        "refused",
        &codec::encode_response(&refused),
        GOLDEN_RESP_REFUSED,
    );
    let status = Response::PinStatus {
        entries: vec![PinStatusEntry {
            cid: cid(),
            status: "pin_error".into(),
            error: Some("timeout".into()),
            attempts: 3,
            updated_ms: 1_700_000_000_000,
        }],
    };
    check(
        "pin status",
        &codec::encode_response(&status),
        GOLDEN_RESP_PIN_STATUS,
    );
    let node = Response::IpfsNode {
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    };
    check(
        "ipfs node",
        &codec::encode_response(&node),
        GOLDEN_RESP_IPFS_NODE,
    );
}

#[test]
fn stored_entry_and_pin_entry() {
    check("entry", &encode_entry(&[version()]), GOLDEN_ENTRY);
    let entry = PinEntry {
        cid: cid(),
        versions: vec![version()],
    };
    let len = codec::encoded_len(&entry);
    // The budget for one pin entry with a short name and no metadata.
    assert!(len <= 80, "one pin entry encodes to {len} bytes");
}

#[test]
fn everything_round_trips() {
    let messages = [Gossip::DeltaBatch(batch()), Gossip::Beacon(summary())];
    for m in messages {
        assert_eq!(codec::decode_gossip(&codec::encode_gossip(&m)), Ok(m));
    }
    let requests = [
        Request::Status,
        Request::GetDeltas {
            origin: actor(),
            from: 1,
            to: 2,
        },
        Request::Snapshot {
            snapshot_id: None,
            after: None,
            limit: 10,
        },
    ];
    for r in requests {
        assert_eq!(codec::decode_request(&codec::encode_request(&r)), Ok(r));
    }
    let response = Response::Deltas {
        batches: vec![batch()],
    };
    assert_eq!(
        codec::decode_response(&codec::encode_response(&response)),
        Ok(response)
    );
    assert_eq!(
        codec::decode_entry(&encode_entry(&[version()])),
        Ok(vec![version()])
    );
}

#[test]
fn tampered_batches_are_rejected() {
    use pinmesh_protocol::BatchError;
    let mut b = batch();
    b.changes[0].pin = Some((1, PinSpec::named("evil")));
    assert_eq!(b.verify(CLUSTER), Err(BatchError::BadSignature));

    let mut b = batch();
    b.first = 2;
    assert_eq!(b.verify(CLUSTER), Err(BatchError::BadSignature));

    // Signed by another key but claiming the first key's origin.
    let other = SigningKey::from_bytes(&[8; 32]);
    let mut b = batch();
    b.author = Key(other.verifying_key().to_bytes());
    assert!(matches!(
        b.verify(CLUSTER),
        Err(BatchError::OriginMismatch { .. })
    ));

    let mut b = batch();
    b.signature = Sig([0; 64]);
    assert_eq!(b.verify(CLUSTER), Err(BatchError::BadSignature));

    let mut b = batch();
    b.first = u64::MAX;
    assert_eq!(
        b.verify(CLUSTER),
        Err(BatchError::BadRange { first: u64::MAX })
    );

    // A change may not observe its own origin's dots made at or after it, nor one dot twice.
    let mut b = batch();
    b.changes[0].observed.push(Dot::new(actor(), 2));
    assert!(matches!(
        b.verify(CLUSTER),
        Err(BatchError::BadObserved { counter: 1, .. })
    ));
    let mut b = batch();
    let seen = b.changes[2].observed[0];
    b.changes[2].observed.push(seen);
    assert!(matches!(
        b.verify(CLUSTER),
        Err(BatchError::BadObserved { counter: 3, .. })
    ));
    // An unverified batch with overflowing counters yields what fits, never a panic.
    let mut b = batch();
    b.first = u64::MAX;
    assert_eq!(b.deltas().count(), 1);

    let d: Vec<Delta> = batch().deltas().collect();
    assert_eq!(d.len(), 3);
    assert_eq!(d[2].dot, Dot::new(actor(), 3));
}

const GOLDEN_BATCH: &str = "8201a16a44656c74614261746368861bb172c71a2cdccc785820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c182a01838358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c821b0000019ab697e800a1006161808358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c821b0000019ab697e801a8006670686f746f7301010202030304816f313244334b6f6f574578616d706c65051a713fb30006a1647465616d636f70730781772f6970342f3132372e302e302e312f7463702f3430303181821bb172c71a2cdccc78018358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31cf681821bb172c71a2cdccc780258404870daa87b4b1975e7e069797612b93161226803ad882f1d1a04bea3c6b263c1d16f014d50761b2869f03222160c1c9f92a4619c2c2146eaeba20145569df10c";
const GOLDEN_BEACON: &str = "8201a166426561636f6ea7001bb172c71a2cdccc78010c025820abababababababababababababababababababababababababababababababab035820cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd04a205818209091bb172c71a2cdccc78818201030581821bb172c71a2cdccc780106f5";
const GOLDEN_REQ_STATUS: &str = "820100";
const GOLDEN_REQ_GET: &str = "8201a101a3001bb172c71a2cdccc78010502190384";
const GOLDEN_REQ_SNAPSHOT: &str = "8201a102a300070158240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c02191388";
const GOLDEN_RESP_STATUS: &str = "8201a166537461747573a7001bb172c71a2cdccc78010c025820abababababababababababababababababababababababababababababababab035820cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd04a205818209091bb172c71a2cdccc78818201030581821bb172c71a2cdccc780106f5";
const GOLDEN_RESP_DELTAS: &str = "8201a101a10081861bb172c71a2cdccc785820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c182a01838358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c821b0000019ab697e800a1006161808358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c821b0000019ab697e801a8006670686f746f7301010202030304816f313244334b6f6f574578616d706c65051a713fb30006a1647465616d636f70730781772f6970342f3132372e302e302e312f7463702f3430303181821bb172c71a2cdccc78018358240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31cf681821bb172c71a2cdccc780258404870daa87b4b1975e7e069797612b93161226803ad882f1d1a04bea3c6b263c1d16f014d50761b2869f03222160c1c9f92a4619c2c2146eaeba20145569df10c";
const GOLDEN_RESP_TRUNCATED: &str = "8201a102a2001bb172c71a2cdccc78011864";
const GOLDEN_RESP_CHUNK: &str = "8201a16d536e617073686f744368756e6ba4000701a400a205818209091bb172c71a2cdccc788182010301a205818209091bb172c71a2cdccc78818201030201035820010101010101010101010101010101010101010101010101010101010101010102818258240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c8183821bb172c71a2cdccc78011b0000019ab697e800a1006a70696e2d31323334353603f6";
const GOLDEN_RESP_REFUSED: &str = "8201a104a1006462757379";
const GOLDEN_REQ_PIN_STATUS: &str =
    "8201a103a1008158240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c";
const GOLDEN_REQ_IPFS_NODE: &str = "820104";
const GOLDEN_RESP_IPFS_NODE: &str =
    "8201a106a10081772f6970342f3132372e302e302e312f7463702f34303031";
const GOLDEN_RESP_PIN_STATUS: &str = "8201a105a100818558240155122066abd4905977cfa452df36339ceb13b89fd1eb4b06d6fcc2b952ffdb8b29f31c6970696e5f6572726f726774696d656f7574031b0000018bcfe56800";
const GOLDEN_ENTRY: &str = "8183821bb172c71a2cdccc78011b0000019ab697e800a1006a70696e2d313233343536";
