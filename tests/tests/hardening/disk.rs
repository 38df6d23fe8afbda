//! Storage faults: a full disk, a damaged database.

use super::*;

/// A process that is killed when dropped (a failed assertion must not leave it running).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The mount of a small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// None when mounting is not allowed here (not root).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// 6. A full disk stops the agent with one line; nothing acknowledged is lost.
#[test]
fn a_full_disk_stops_the_agent_with_one_line_and_loses_nothing() {
    let Some(disk) = Tmpfs::mount("6m") else {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    };
    let home = disk.dir.path().join("agent");
    init_loopback(&home, &[]);
    let log = TempDir::new().expect("log dir");
    let log_path = log.path().join("stderr");
    // Killed whatever happens, before the tmpfs is unmounted (declared after it).
    let mut child = Running(
        Command::new(pinmesh_bin())
            .arg("--dir")
            .arg(&home)
            .arg("run")
            .env("PINMESH_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("spawn"),
    );
    let out = child.0.stdout.take().expect("stdout");
    let api = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("api: ").map(str::to_string))
        .expect("the agent printed its API address");
    let token = std::fs::read_to_string(home.join("api.token")).expect("token");
    let client = pinmesh_agent::api::client::Client::new(api, token.trim());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let mut acked = 0u64;
    let refusal = runtime.block_on(async {
        for round in 0..400u64 {
            let batch: Vec<PinRequest> = (0..250u64)
                .map(|n| PinRequest::new(sim_cid(round * 250 + n), format!("{n:0>200}")))
                .collect();
            match client.pin_many(&batch).await {
                Ok(receipts) => acked += receipts.len() as u64,
                Err(err) => return err.to_string(),
            }
        }
        panic!("a 6 MB disk took 100,000 pins");
    });
    assert!(refusal.contains("disk is full"), "{refusal}");
    assert!(acked > 0, "nothing fitted");

    // The agent exits by itself (a supervisor restarts it), with one line.
    let deadline = std::time::Instant::now() + CONVERGE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the agent stayed up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&log_path).expect("stderr");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("disk is full"), "{said}");

    // With room again, every acknowledged pin is there.
    disk.resize("64m");
    let agent = AgentProcess::run(&pinmesh_bin(), &home).expect("restart");
    let listed = runtime
        .block_on(agent.client.list(|_| Ok(())))
        .expect("pin ls");
    assert!(listed >= acked, "{listed} listed, {acked} acknowledged");
    drop(agent);
}

// 3. A changed byte inside the pinset is found at start; `run --resync` rejoins from peers.
#[test]
fn a_damaged_database_is_found_and_resync_rejoins_from_peers() {
    let secret = random_secret();
    let (a_dir, b_dir) = (TempDir::new().expect("dir"), TempDir::new().expect("dir"));
    init_loopback(a_dir.path(), &["--secret", &secret]);
    let a = AgentProcess::run(&pinmesh_bin(), a_dir.path()).expect("a runs");
    init_loopback(b_dir.path(), &["--secret", &secret, "--bootstrap", &a.addr]);
    let b = AgentProcess::run(&pinmesh_bin(), b_dir.path()).expect("b runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let batch: Vec<PinRequest> = (0..200u64)
        .map(|n| PinRequest::new(sim_cid(n), format!("p{n}")))
        .collect();
    runtime.block_on(a.client.pin_many(&batch)).expect("pins");
    let out = pinmesh_in(a_dir.path(), &["debug", "converge", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    a.stop().expect("a stops");

    // One bit of one known CID's bytes, wherever the file holds them (its pin entry, its delta).
    let db = a_dir.path().join("pinmesh.redb");
    let mut bytes = read(&db);
    let cid = sim_cid(7).to_bytes();
    let places: Vec<usize> = bytes
        .windows(cid.len())
        .enumerate()
        .filter(|(_, w)| *w == cid.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert!(!places.is_empty(), "the CID is in the file");
    for at in places {
        bytes[at + cid.len() - 1] ^= 0x01;
    }
    std::fs::write(&db, bytes).expect("write");

    let out = run_expecting_exit(a_dir.path());
    assert_one_line_error(&out, "is damaged");
    assert!(
        stderr(&out).contains("pinmesh run --resync"),
        "{}",
        stderr(&out)
    );

    let a = AgentProcess::run_with(&pinmesh_bin(), a_dir.path(), &["--resync"]).expect("resync");
    let out = pinmesh_in(a_dir.path(), &["debug", "converge", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let mut names = std::collections::BTreeMap::new();
    runtime
        .block_on(a.client.list(|p| {
            names.insert(p.cid, p.name);
            Ok(())
        }))
        .expect("pin ls");
    assert_eq!(names.len(), 200);
    assert_eq!(
        names.get(&sim_cid(7).to_string()).map(String::as_str),
        Some("p7")
    );
    let kept = std::fs::read_dir(a_dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pinmesh.redb.damaged-")
        });
    assert!(kept, "the damaged file was not kept");
    drop((a, b));
}
