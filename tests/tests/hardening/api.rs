//! The control API under attack: slow and stalled clients, limits, every error in JSON.

use super::*;

/// Reads from `stream` until it is closed by the other end, or `within` passes. True when
/// closed (EOF or reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

fn api_config(agent: &TestAgent, change: impl FnOnce(&mut pinmesh_agent::config::ApiConfig)) {
    agent.configure(|c| change(&mut c.api));
}

// 9. Header timeout and connection limit, before any token is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_closes_slow_headers_and_refuses_connections_over_its_limit() {
    // A limit of 3 with a header timeout long enough not to free a slot during the test.
    let mut limited = TestAgent::create(&random_secret(), &[]);
    api_config(&limited, |api| {
        api.max_connections = 3;
        api.header_timeout = Duration::from_secs(120);
    });
    let api = limited.start().await.api_addr;
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(api).expect("connect");
            s.write_all(b"GET /v1/id HTTP/1.1\r\nHost: x\r\n")
                .expect("partial");
            s
        })
        .collect();
    // Accepted in order: once the three are served, the fourth is closed at once.
    let client = limited.client();
    let mut extra = TcpStream::connect(api).expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(20)),
        "a connection over the limit was kept open"
    );
    for s in &mut slow {
        assert!(
            !closed_within(s, Duration::from_millis(100)),
            "slow one cut"
        );
    }
    // Slots come back when those clients leave.
    slow.clear();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while client.digest().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A header timeout of 1s closes a half-sent request, and an idle kept-alive connection.
    let mut quick = TestAgent::create(&random_secret(), &[]);
    api_config(&quick, |api| api.header_timeout = Duration::from_secs(1));
    let api = quick.start().await.api_addr;
    let mut half = TcpStream::connect(api).expect("connect");
    half.write_all(b"GET /v1/id HTTP/1.1\r\n").expect("partial");
    assert!(
        closed_within(&mut half, Duration::from_secs(20)),
        "a half-sent request line stayed open"
    );
    let mut idle = TcpStream::connect(api).expect("connect");
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)),
        "an idle connection stayed open"
    );
    quick.stop().await;
    limited.stop().await;
}

/// Sends one raw HTTP/1.1 request with `body` and returns the status and body of the answer.
fn raw_request(api: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(api).expect("connect");
    let request = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// The API's edges: a full batch fits, every error is JSON, the scheme is case-insensitive,
// control characters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_a_full_batch_and_answers_every_error_in_json() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    let api = agent.start().await.api_addr;
    let token = agent.home.load_token().expect("token");
    let client = agent.client();

    // 10,000 pins with 200-byte names: the batch limit the README promises.
    let batch: Vec<PinRequest> = (0..10_000u64)
        .map(|n| PinRequest::new(sim_cid(n), format!("{n:0>200}")))
        .collect();
    let receipts = client.pin_many(&batch).await.expect("a full batch");
    assert_eq!(receipts.len(), 10_000);

    let auth = format!("Authorization: bearer {token}");
    let (status, body) = raw_request(
        api,
        &format!("POST /v1/pins HTTP/1.1\r\n{auth}\r\nContent-Type: application/json"),
        b"{not json",
    );
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, body) = raw_request(api, &format!("POST /v1/pins HTTP/1.1\r\n{auth}"), b"{}");
    assert_eq!(status, 415, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).expect("a JSON error");
    let (status, body) = raw_request(api, &format!("GET /v1/nothing HTTP/1.1\r\n{auth}"), b"");
    assert_eq!(status, 404, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).expect("a JSON error");
    // Lower-case scheme accepted.
    let (status, body) = raw_request(
        api,
        &format!("GET /v1/debug/digest HTTP/1.1\r\n{auth}"),
        b"",
    );
    assert_eq!(status, 200, "{body}");

    let err = client
        .pin(&PinRequest::new(sim_cid(20_000), "\u{1b}[2Jgone"))
        .await
        .expect_err("an escape sequence in a name");
    assert!(err.to_string().contains("control characters"), "{err}");
    assert_eq!(agent.state().summary.pins, 10_000);
    agent.stop().await;
}

// 5. Stalled listings: bounded, cut after the send timeout, holding nothing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listings_are_bounded_and_cut() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    api_config(&agent, |api| {
        api.max_listings = 2;
        api.send_timeout = Duration::from_secs(2);
    });
    let api = agent.start().await.api_addr;
    let token = agent.home.load_token().expect("token");
    let client = agent.client();
    // About 26 MB of listing: more than loopback socket buffers hold.
    let value = "v".repeat(1_000);
    for chunk in 0..4u64 {
        let batch: Vec<PinRequest> = (0..5_000u64)
            .map(|n| {
                let mut pin = PinRequest::new(sim_cid(chunk * 5_000 + n), "big");
                pin.metadata.insert("k".into(), value.clone());
                pin
            })
            .collect();
        client.pin_many(&batch).await.expect("batch");
    }
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            // A small receive buffer, fixed (no autotuning): the listing cannot fit in flight.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.connect(&api.into()).expect("connect");
            let mut s: TcpStream = socket.into();
            let request = format!(
                "GET /v1/pins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            s.write_all(request.as_bytes()).expect("request");
            s
        })
        .collect();
    // Both have begun (their answers' first bytes arrived), and neither reads on.
    for s in &stalled {
        let mut first = [0u8; 12];
        s.try_clone()
            .expect("clone")
            .read_exact(&mut first)
            .expect("answer begins");
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    let err = client.list(|_| Ok(())).await.expect_err("a third listing");
    assert!(err.to_string().contains("api.max_listings"), "{err}");

    // After the send timeout the stalled ones are cut, and listings work again.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let count = loop {
        match client.list(|_| Ok(())).await {
            Ok(count) => break count,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "never freed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(count, 20_000);
    for mut s in stalled {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(CONVERGE)).expect("timeout");
        let _ = s.read_to_end(&mut rest);
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "a stalled listing was not cut ({} bytes)",
            rest.len()
        );
    }
    agent.stop().await;
}
