use libp2p::identity::ed25519;

use super::*;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn peer_of(key: &ed25519::Keypair) -> PeerId {
    libp2p::identity::PublicKey::from(key.public()).to_peer_id()
}

/// A configuration issued by a writer, with another writer listed beside it.
fn issued() -> (FollowConfig, ed25519::Keypair, PeerId) {
    let writer = ed25519::Keypair::generate();
    let other = PeerId::random();
    let me = peer_of(&writer);
    let member: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{me}")
        .parse()
        .expect("multiaddr");
    let config = FollowConfig::issue(&writer, "archive", SECRET, &[member], &[me, other], 7);
    (config, writer, me)
}

#[test]
fn a_configuration_verifies_against_the_writer_that_signed_it() {
    let (config, _, writer) = issued();
    let following = config.verify(&writer).expect("verifies");
    assert_eq!(following.cluster, "archive");
    assert_eq!(following.secret, SECRET);
    assert_eq!(following.signer, writer);
    assert_eq!(following.trusted_writers.len(), 2);
    assert_eq!(following.bootstrap.len(), 1);
    // Through its published form too.
    let text = serde_json::to_string_pretty(&config).expect("json");
    let back: FollowConfig = serde_json::from_str(&text).expect("parses");
    assert_eq!(back.verify(&writer), Ok(following));
}

#[test]
fn any_change_after_signing_is_refused() {
    let (config, _, writer) = issued();
    type Change = Box<dyn Fn(&mut FollowConfig)>;
    let changes: Vec<(&str, Change)> = vec![
        ("cluster", Box::new(|c| c.cluster.push('x'))),
        ("secret", Box::new(|c| c.secret = SECRET.replace('0', "f"))),
        (
            "bootstrap",
            Box::new(|c| c.bootstrap[0] = c.bootstrap[0].replace("4001", "4002")),
        ),
        (
            "writers",
            Box::new(|c| c.trusted_writers.push(PeerId::random().to_string())),
        ),
        ("issued_at", Box::new(|c| c.issued_at += 1)),
        (
            "signature",
            Box::new(|c| c.signature.replace_range(0..2, "00")),
        ),
    ];
    for (what, change) in changes {
        let mut tampered = config.clone();
        change(&mut tampered);
        if tampered == config {
            continue; // the signature's first byte was already 00
        }
        assert_eq!(
            tampered.verify(&writer),
            Err(FollowError::BadSignature),
            "{what} changed"
        );
    }
}

#[test]
fn a_configuration_is_checked_against_the_writer_named_out_of_band_only() {
    let (config, _, writer) = issued();
    // Someone else's key, listing itself as the trusted writer: consistent, and refused,
    // because the follower was told of another writer.
    let forger = ed25519::Keypair::generate();
    let member: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", peer_of(&forger))
        .parse()
        .expect("multiaddr");
    let forged = FollowConfig::issue(
        &forger,
        "archive",
        SECRET,
        &[member],
        &[peer_of(&forger)],
        7,
    );
    assert!(matches!(
        forged.verify(&writer),
        Err(FollowError::NotTheWriter { .. })
    ));
    // The other listed writer did not sign it.
    let other: PeerId = config.trusted_writers[1].parse().expect("peer id");
    assert!(matches!(
        config.verify(&other),
        Err(FollowError::NotTheWriter { .. })
    ));
    // A writer signing a configuration that does not list it vouches for nothing.
    let key = ed25519::Keypair::generate();
    let signer = peer_of(&key);
    let unlisted = FollowConfig::issue(
        &key,
        "archive",
        SECRET,
        &[format!("/ip4/127.0.0.1/tcp/1/p2p/{writer}")
            .parse()
            .expect("multiaddr")],
        &[writer],
        7,
    );
    assert_eq!(
        unlisted.verify(&signer),
        Err(FollowError::WriterNotListed(signer))
    );
}

#[test]
fn an_unknown_format_or_a_malformed_field_is_one_clear_refusal() {
    let (mut config, key, writer) = issued();
    config.format = 2;
    assert_eq!(config.verify(&writer), Err(FollowError::Format(2)));
    // Signed, but with fields that do not parse.
    let member: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{writer}")
        .parse()
        .expect("multiaddr");
    let bad_secret = FollowConfig::issue(&key, "archive", "zz", &[member], &[writer], 7);
    let err = bad_secret.verify(&writer).expect_err("refused");
    assert!(err.to_string().contains("64 hexadecimal digits"), "{err}");
    let nobody = FollowConfig::issue(&key, "archive", SECRET, &[], &[writer], 7);
    let err = nobody.verify(&writer).expect_err("refused");
    assert!(err.to_string().contains("no member"), "{err}");
    assert_eq!(err.to_string().lines().count(), 1);
}
