use super::wire::Flex;
use super::*;

#[test]
fn numbers_are_read_as_numbers_or_strings() {
    let kubo: RepoStatBody =
        serde_json::from_str(r#"{"RepoSize":1354,"StorageMax":10000000000}"#).expect("kubo");
    let js: RepoStatBody = serde_json::from_str(
        r#"{"NumObjects":"2","RepoSize":"1354","StorageMax":"9007199254740991"}"#,
    )
    .expect("js-ipfs");
    assert_eq!(kubo.repo_size, Flex(1354));
    assert_eq!(js.repo_size, Flex(1354));
    assert_eq!(js.storage_max, Flex(9007199254740991));
    assert!(serde_json::from_str::<RepoStatBody>(r#"{"RepoSize":"lots","StorageMax":1}"#).is_err());
}

#[test]
fn an_error_in_the_stream_is_read_as_the_nodes_message() {
    let line: Line<PinAddLine> =
        serde_json::from_str(r#"{"Message":"context deadline exceeded","Code":0,"Type":"error"}"#)
            .expect("error line");
    assert_eq!(line.message.as_deref(), Some("context deadline exceeded"));
    let line: Line<PinAddLine> = serde_json::from_str(r#"{"Progress":7}"#).expect("progress");
    assert_eq!((line.message, line.body.progress), (None, Some(7)));
}

#[test]
fn listings_are_read_streamed_or_whole() {
    let streamed: PinLsLine = serde_json::from_str(
        r#"{"Cid":"QmeCaRmZ3KyqZQkMnpybyCMqwyrCZhBmzyUkJv3xNxaA9T","Type":"recursive","Name":""}"#,
    )
    .expect("line");
    assert!(streamed.cid.is_some() && streamed.keys.is_empty());
    let whole: PinLsLine = serde_json::from_str(
        r#"{"Keys":{"zb2rhXq8rmxEJnpVC8T1PXdyaaodvWhcvsLYGeKEdeLFaSpyD":{"Type":"recursive"}}}"#,
    )
    .expect("whole");
    assert_eq!(whole.keys.len(), 1);
}

#[test]
fn auth_follows_kubo_syntax_and_urls_are_checked() {
    assert_eq!(parse_auth("bearer:abc").as_deref(), Ok("Bearer abc"));
    assert_eq!(
        parse_auth("basic:user:pw").as_deref(),
        Ok("Basic dXNlcjpwdw==")
    );
    assert!(parse_auth("token abc").is_err());
    assert!(parse_auth("bearer:").is_err());
    assert!(KuboBackend::new("127.0.0.1:5001", None, Duration::from_secs(1)).is_err());
    assert!(KuboBackend::new("ftp://x", None, Duration::from_secs(1)).is_err());
    let ok = KuboBackend::new(
        "http://127.0.0.1:5001/api/v0/",
        None,
        Duration::from_secs(1),
    )
    .expect("url");
    assert_eq!(ok.base, "http://127.0.0.1:5001");
}

#[tokio::test]
async fn a_node_that_is_down_is_unreachable_not_refused() {
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let kubo = KuboBackend::new(
        &format!("http://127.0.0.1:{port}"),
        None,
        Duration::from_secs(2),
    )
    .expect("url");
    let err = kubo.id().await.expect_err("nothing listens");
    assert!(err.node_down(), "{err:?}");
}
