//! Faults against the real binary: the registry file truncated, deleted and rewritten slowly
//! mid-run, and SIGTERM in the middle of a push. In every case clients lose no ServiceEntry they
//! hold, every response they see is a complete state, the server recovers without a restart, and
//! the event shows in the log and in `cloudmap_mcp_source_errors_total`.
//! (Cloud Map faults against the moto emulator are in tests/cloudmap_faults.rs.)
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudmap_mcp::proto::DiscoveryResponse;
use support::*;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";

fn registry(services: usize, skip: &[usize], generation: u32) -> String {
    let mut s = String::from("namespaces:\n  - name: faults.example\n    type: DNS_PRIVATE\n    services:\n");
    for svc in (0..services).filter(|i| !skip.contains(i)) {
        let last = if svc == 0 { generation % 250 + 1 } else { 7 };
        s.push_str(&format!(
            "      - name: svc-{svc:04}\n        createDate: \"2024-01-01T00:00:00Z\"\n        instances:\n          - id: a\n            attributes: {{AWS_INSTANCE_IPV4: 10.1.{}.{last}, AWS_INSTANCE_PORT: 8080}}\n          - id: b\n            attributes: {{AWS_INSTANCE_IPV4: 10.2.{}.{last}, AWS_INSTANCE_PORT: 8080}}\n",
            svc % 250,
            svc % 250
        ));
    }
    s
}

fn names(r: &DiscoveryResponse) -> BTreeSet<String> {
    service_entries(r).into_iter().map(|(n, _, _)| n).collect()
}

/// The names of a response's resources, without decoding the ServiceEntries (cheaper, for many
/// clients reading at once).
fn resource_names(r: &DiscoveryResponse) -> BTreeSet<String> {
    use prost::Message;
    r.resources
        .iter()
        .map(|any| cloudmap_mcp::proto::istio::mcp::v1alpha1::Resource::decode(any.value.as_slice()).expect("MCP resource").metadata.expect("metadata").name)
        .collect()
}

fn expected(text: &str) -> BTreeSet<String> {
    let snap = cloudmap_mcp::source::file::parse(Path::new("x.yaml"), text).unwrap();
    cloudmap_mcp::translate::translate(&snap, &Default::default()).entries.iter().map(|e| e.resource_name()).collect()
}

fn metric(server: &ServerProcess, name: &str) -> f64 {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const FILE_ERRORS: &str = r#"cloudmap_mcp_source_errors_total{source="file"}"#;

/// Nothing arrives on the stream for `d` (what clients hold does not change).
async fn quiet(ads: &mut AdsStream, d: Duration, what: &str) {
    if let Some(r) = ads.recv(d).await {
        panic!("{what}: the server pushed {} resources of {} (version {})", r.resources.len(), r.type_url, r.version_info);
    }
}

/// Waits until the log has `needle` at least `count` times.
fn wait_log_count(server: &ServerProcess, needle: &str, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if server.logs().matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Overwrites the file in place (truncate, then write), as a non-atomic writer does.
fn write_in_place(path: &Path, bytes: &[u8], chunk: usize, pause: Duration) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    for c in bytes.chunks(chunk.max(1)) {
        f.write_all(c).unwrap();
        f.flush().unwrap();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_file_truncated_deleted_or_rewritten_slowly_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    let full = registry(40, &[], 0);
    let all = expected(&full);
    assert_eq!(all.len(), 40);
    std::fs::write(&path, &full).unwrap();
    // 400ms polls: a changed file must read the same again 200ms later; a cut-off copy is held 5s.
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "400ms"]);
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(names(&got[SE_V1]), all);
    let mut errors = metric(&server, FILE_ERRORS);
    let mut faults = 0;

    // 1. Truncated to zero bytes (`: > registry.yaml`, or a writer that died after opening).
    write_in_place(&path, b"", 1, Duration::ZERO);
    assert!(server.wait_log("registry file is empty", Duration::from_secs(5)), "{}", server.logs());
    quiet(&mut ads, Duration::from_secs(1), "empty file").await;
    let mut fresh = AdsStream::connect(&server.url()).await;
    assert_eq!(names(&fresh.istiod_handshake(ISTIOD_130_KINDS).await[SE_V1]), all, "a new client gets the full state");
    drop(fresh);
    assert!(metric(&server, FILE_ERRORS) > errors);
    errors = metric(&server, FILE_ERRORS);
    write_in_place(&path, full.as_bytes(), usize::MAX, Duration::ZERO);
    assert!(wait_log_count(&server, "back to the served version", 1, Duration::from_secs(5)), "{}", server.logs());
    quiet(&mut ads, Duration::from_millis(600), "restored file").await;
    faults += 1;

    // 2. Cut off mid-line and at a line end (both still valid-looking YAML for fewer services).
    for (i, cut) in [full.len() / 3, full[..full.len() / 2].rfind('\n').unwrap() + 1].into_iter().enumerate() {
        write_in_place(&path, &full.as_bytes()[..cut], usize::MAX, Duration::ZERO);
        assert!(wait_log_count(&server, "cut-off copy of the served version", i + 1, Duration::from_secs(5)), "{}", server.logs());
        quiet(&mut ads, Duration::from_secs(2), "cut-off file").await;
        assert!(metric(&server, FILE_ERRORS) > errors);
        errors = metric(&server, FILE_ERRORS);
        write_in_place(&path, full.as_bytes(), usize::MAX, Duration::ZERO);
        assert!(wait_log_count(&server, "back to the served version", 2 + i, Duration::from_secs(5)), "{}", server.logs());
        quiet(&mut ads, Duration::from_millis(600), "restored file").await;
        faults += 1;
    }

    // 3. Deleted, then back (a ConfigMap volume swapping its symlink, an operator's mistake).
    let aside = dir.path().join("aside.yaml");
    std::fs::rename(&path, &aside).unwrap();
    assert!(server.wait_log("cannot read registry file", Duration::from_secs(5)));
    quiet(&mut ads, Duration::from_secs(1), "deleted file").await;
    assert!(metric(&server, FILE_ERRORS) > errors);
    std::fs::rename(&aside, &path).unwrap();
    assert!(wait_log_count(&server, "back to the served version", 4, Duration::from_secs(5)), "{}", server.logs());
    quiet(&mut ads, Duration::from_millis(600), "file back").await;
    faults += 1;

    // 4. Broken YAML (an editor saving half a change).
    write_in_place(&path, full.replace("AWS_INSTANCE_PORT: 8080}", "AWS_INSTANCE_PORT: [8080}").as_bytes(), usize::MAX, Duration::ZERO);
    assert!(server.wait_log("registry file edit rejected", Duration::from_secs(5)));
    quiet(&mut ads, Duration::from_secs(1), "broken file").await;
    faults += 1;

    // 5. An edit written slowly in place (truncate, then 512-byte chunks): exactly one push, with
    // the final state, never a partial one.
    let edited = registry(40, &[], 1);
    write_in_place(&path, edited.as_bytes(), 512, Duration::from_millis(3));
    let r = ads.recv(Duration::from_secs(10)).await.expect("the edit is pushed");
    assert_eq!(names(&r), all, "full state");
    let ses = service_entries(&r);
    assert_eq!(ses[0].2.endpoints[0].address, "10.1.0.2", "the edited address");
    ads.ack(&r).await;
    quiet(&mut ads, Duration::from_secs(1), "after the slow edit").await;

    // 6. Recovery without restart: an ordinary edit removing a service is applied.
    let smaller = registry(40, &[39], 1);
    write_in_place(&path, smaller.as_bytes(), usize::MAX, Duration::ZERO);
    let r = ads.recv(Duration::from_secs(10)).await.expect("the edit is pushed");
    assert_eq!(names(&r), expected(&smaller));
    assert_eq!(names(&r).len(), 39);
    ads.ack(&r).await;

    // 7. A cut-off copy that stays for the whole hold is an edit after all (documented rule).
    let cut = smaller[..smaller.len() / 2].rfind('\n').unwrap() + 1;
    let t0 = Instant::now();
    write_in_place(&path, &smaller.as_bytes()[..cut], usize::MAX, Duration::ZERO);
    let r = ads.recv(Duration::from_secs(15)).await.expect("a lasting cut is applied after the hold");
    assert!(t0.elapsed() >= Duration::from_secs(4), "applied after {:?}, before the 5 s hold", t0.elapsed());
    assert_eq!(names(&r), expected(&String::from_utf8_lossy(&smaller.as_bytes()[..cut])));
    assert!(server.logs().contains("stayed cut off for the whole hold"));
    assert!(!server.logs().contains("panicked"));
    eprintln!("FAULTS registry file: {faults} faults survived with nothing pushed, one slow in-place edit pushed once, whole");
}

/// Writes `text` to `path` atomically (a new file renamed over it), as editors and ConfigMap
/// updates do.
fn write_atomically(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Edits of a registry parse only the services that changed (debug log), and what clients get is
/// what a whole parse of the file gives: an address moved, a service added, a service removed, a
/// namespace field changed (parsed whole), a broken edit (refused, the whole parse's error), and an
/// edit after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_edits_parse_only_what_changed_and_serve_the_whole_file() {
    edits_parse_only_what_changed(false).await;
}

/// The same for the registry written as JSON (one service per line, as `scripts/gen-registry.py`
/// writes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_edits_parse_only_what_changed_and_serve_the_whole_file() {
    edits_parse_only_what_changed(true).await;
}

async fn edits_parse_only_what_changed(json: bool) {
    let as_file = |yaml: String| -> String {
        if !json {
            return yaml;
        }
        let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        serde_json::to_string(&value).unwrap().replace("},{", "},\n{")
    };
    let registry = |services: usize, skip: &[usize], generation: u32| as_file(registry(services, skip, generation));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(if json { "registry.json" } else { "registry.yaml" });
    let full = registry(60, &[], 0);
    std::fs::write(&path, &full).unwrap();
    // One step renames the namespace of every service, which the edit guard would hold as a mass
    // removal (tests/edit_guard.rs); here it must be applied, to check the whole parse it takes.
    let server = ServerProcess::start_env(
        &["--registry-file", path.to_str().unwrap(), "--max-removal-ratio", "100%"],
        &[("RUST_LOG", "info,cloudmap_mcp::source::file=debug")],
    );
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(names(&got[SE_V1]), expected(&full));
    let shortened = "parsed only the services that changed";

    let steps = [
        ("an address moved", registry(60, &[], 7), true),
        ("a service removed", registry(60, &[17], 7), true),
        ("a service added back", registry(60, &[], 7), true),
        ("a namespace field", registry(60, &[], 7).replace("faults.example", "renamed.example"), false),
        ("an address after that", registry(60, &[], 8).replace("faults.example", "renamed.example"), true),
    ];
    for (what, text, short) in steps {
        let before = server.logs().matches(shortened).count();
        write_atomically(&path, &text);
        let r = ads.recv(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("{what}: pushed"));
        ads.ack(&r).await;
        // Exactly what a whole parse of the file serves: names and every ServiceEntry.
        let snap = cloudmap_mcp::source::file::parse(Path::new("x.yaml"), &text).unwrap();
        let mut want: Vec<_> = cloudmap_mcp::translate::translate(&snap, &Default::default())
            .entries
            .iter()
            .map(|e| (e.resource_name(), e.spec.hosts.clone(), e.spec.endpoints.iter().map(|ep| ep.address.clone()).collect::<Vec<_>>()))
            .collect();
        let mut got: Vec<_> = service_entries(&r)
            .into_iter()
            .map(|(n, _, se)| (n, se.hosts, se.endpoints.into_iter().map(|ep| ep.address).collect::<Vec<_>>()))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{what}");
        assert_eq!(server.logs().matches(shortened).count() > before, short, "{what}: {}", server.logs());
    }

    // A broken edit of one service: refused with the file's own position, the served state kept.
    let renamed = |g| registry(60, &[], g).replace("faults.example", "renamed.example");
    let broken = if json { renamed(8).replacen("\"AWS_INSTANCE_PORT\":8080}", "\"AWS_INSTANCE_PORT\":[8080}", 1) } else { renamed(8).replacen("AWS_INSTANCE_PORT: 8080}", "AWS_INSTANCE_PORT: [8080}", 1) };
    assert_ne!(broken, renamed(8));
    write_atomically(&path, &broken);
    assert!(server.wait_log("registry file edit rejected", Duration::from_secs(5)));
    let whole_error = cloudmap_mcp::source::file::parse(Path::new("x.yaml"), &broken).unwrap_err().to_string();
    let position = whole_error.split(": ").last().unwrap().to_string();
    assert!(position.contains("line "), "{whole_error}");
    assert!(server.logs().contains(&position), "the whole parse's position ({position}) in: {}", server.logs());
    quiet(&mut ads, Duration::from_secs(1), "broken edit").await;
    let fixed = renamed(9);
    write_atomically(&path, &fixed);
    let r = ads.recv(Duration::from_secs(10)).await.expect("the fixed edit is pushed");
    assert_eq!(service_entries(&r)[0].2.endpoints[0].address, "10.1.0.10");
    assert!(!server.logs().contains("panicked"));
}

/// A registry of 1,500 services written at `dir/registry.yaml`, and its next version with every
/// second service removed: a push of about 350 KB per kind.
struct Push {
    path: std::path::PathBuf,
    after: String,
    old: BTreeSet<String>,
    new: BTreeSet<String>,
}

fn push_of_half_the_services(dir: &Path) -> Push {
    let path = dir.join("registry.yaml");
    let before = registry(1500, &[], 0);
    let skip: Vec<usize> = (0..1500).filter(|i| i % 2 == 1).collect();
    let after = registry(1500, &skip, 1);
    std::fs::write(&path, &before).unwrap();
    Push { path, old: expected(&before), new: expected(&after), after }
}

/// The server's exit status; fails if it is still running at `deadline`.
async fn exit_within(server: &mut ServerProcess, deadline: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM while a large push is on its way to many clients: each one sees only complete states
/// (the old one or the new one) and then UNAVAILABLE; a client that stopped reading does not hold
/// the shutdown past its grace period.
///
/// On a loaded CI machine one of the 30 once saw its connection reset instead of UNAVAILABLE: the
/// server closed each connection as soon as its last bytes were in the socket, and the client's
/// next window update made the kernel reset the connection and drop the tail it had not read yet
/// (now a lingering close, `net::http2::linger`; the mechanism has its own test in `net`). The
/// test prints how long the slowest reader took after SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let Push { path, after, old, new } = push_of_half_the_services(dir.path());
    let mut server = ServerProcess::start(&[
        "--registry-file",
        path.to_str().unwrap(),
        "--registry-poll-interval",
        "100ms",
        "--shutdown-grace",
        "6s",
    ]);
    let grace = Duration::from_secs(6);
    let clients = 30;
    let mut streams = Vec::new();
    for _ in 0..clients {
        let mut ads = AdsStream::connect(&server.url()).await;
        let got = ads.istiod_handshake(&[SE_V1, "networking.istio.io/v1alpha3/ServiceEntry"]).await;
        assert_eq!(names(&got[SE_V1]), old);
        streams.push(ads);
    }
    // One more client that stops reading.
    let stuck = AdsStream::connect(&server.url()).await;
    stuck.send(SE_V1, "", "").await;
    for _ in 0..20 {
        stuck.send(SE_V1, "", "").await;
    }

    // Readers: collect every response until the stream ends.
    let mut readers = Vec::new();
    for ads in streams {
        let (old, new) = (old.clone(), new.clone());
        readers.push(tokio::spawn(async move {
            // The whole stream moves in: dropping its request side would half-close the stream.
            let mut ads = ads;
            let mut states = 0;
            loop {
                match tokio::time::timeout(Duration::from_secs(30), ads.rx.message()).await {
                    Ok(Ok(Some(r))) => {
                        let n = resource_names(&r);
                        assert!(n == old || n == new, "partial state: {} resources", n.len());
                        states += 1;
                    }
                    Ok(Ok(None)) => return (states, tonic::Status::ok("stream closed with status OK"), Instant::now()),
                    Ok(Err(status)) => return (states, status, Instant::now()),
                    Err(_) => panic!("stream neither ended nor pushed"),
                }
            }
        }));
    }
    write_atomic(&path, &after);
    assert!(wait_log_count(&server, "serving new ServiceEntry snapshot", 2, Duration::from_secs(10)));
    let pid = server.child.id().to_string();
    let t_term = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut codes = std::collections::BTreeMap::new();
    let mut complete = 0;
    let mut slowest = Duration::ZERO;
    for r in readers {
        let (states, status, ended) = r.await.expect("reader");
        complete += states;
        slowest = slowest.max(ended.saturating_duration_since(t_term));
        *codes.entry(format!("{:?}", status.code())).or_insert(0) += 1;
        if status.code() != tonic::Code::Unavailable {
            eprintln!("a reader ended {:.2?} after SIGTERM with {status:?}", ended.saturating_duration_since(t_term));
        }
    }
    assert_eq!(codes.keys().collect::<Vec<_>>(), ["Unavailable"], "end statuses {codes:?}; server logs:\n{}", server.logs());
    let exit = exit_within(&mut server, t_term + grace + Duration::from_secs(5)).await;
    let exited_after = t_term.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(exited_after >= grace, "the stuck client holds the shutdown until the grace is over ({exited_after:?})");
    assert!(exited_after < grace + Duration::from_secs(3), "exit took {exited_after:?}");
    drop(stuck);
    eprintln!(
        "FAULTS sigterm: {clients} clients mid-push, {complete} complete states received during the push, end statuses {codes:?} (the slowest {slowest:.2?} after SIGTERM), exit {exit:?} after {exited_after:.2?}"
    );
    assert!(!server.logs().contains("panicked"));
}

/// A loopback TCP proxy whose server → client direction can be slowed down (a client on a slow
/// link, or one whose reads lag). EOF and errors from the server end the client's side.
struct SlowLink {
    addr: std::net::SocketAddr,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowLink {
    /// Bytes per step and the pause after each while slow: 16 KiB per 25 ms, about 650 KB/s.
    const STEP: usize = 16 * 1024;
    const PAUSE: Duration = Duration::from_millis(25);

    async fn start(upstream: std::net::SocketAddr) -> SlowLink {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = slow.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; Self::STEP];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        if flag.load(Ordering::Relaxed) {
                            tokio::time::sleep(Self::PAUSE).await;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        SlowLink { addr, slow }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// SIGTERM while a push is still on its way over a slow link to a client that ACKs every response,
/// as istiod does, and sends a window update every 8 KiB: the client receives the rest of the push
/// and then UNAVAILABLE, and the server exits once the client has closed, well within its grace.
/// (The reset this guards against depends on when the client's last bytes arrive; it is pinned
/// down deterministically by `net::tests::lingering_close_delivers_the_tail_a_plain_close_loses`.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_client_take_the_rest_of_its_push() {
    let dir = tempfile::tempdir().unwrap();
    let Push { path, after, old, new } = push_of_half_the_services(dir.path());
    let mut server =
        ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "100ms", "--shutdown-grace", "20s"]);
    let link = SlowLink::start(server.grpc).await;
    // Small HTTP/2 windows: the client sends a WINDOW_UPDATE for every 8 KiB it takes, so it keeps
    // writing while the push's tail arrives.
    let channel = tonic::transport::Endpoint::from_shared(link.url())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut ads = AdsStream::open(channel).await;
    let got = ads.istiod_handshake(&[SE_V1, "networking.istio.io/v1alpha3/ServiceEntry"]).await;
    assert_eq!(resource_names(&got[SE_V1]), old);

    link.slow.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = server.logs().matches("response sent").count();
    write_atomic(&path, &after);
    // The new state is on its way (queued for the connection) when SIGTERM comes.
    assert!(wait_log_count(&server, "response sent", sent + 1, Duration::from_secs(10)));
    let pid = server.child.id().to_string();
    let t_term = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut states = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), ads.rx.message()).await {
            Ok(Ok(Some(r))) => {
                let n = resource_names(&r);
                assert!(n == old || n == new, "partial state: {} resources", n.len());
                states.push((r.type_url.clone(), n == new));
                // After the server ended the stream, tonic closes the request side: nothing to ACK.
                ads.try_send(&r.type_url, &r.nonce, &r.version_info).await;
            }
            Ok(Ok(None)) => break tonic::Status::ok("stream closed with status OK"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("stream neither ended nor pushed"),
        }
    };
    let ended = t_term.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?} after {states:?}, {ended:?} after SIGTERM; server logs:\n{}", server.logs());
    assert!(states.iter().any(|(t, is_new)| t == SE_V1 && *is_new), "the new state queued before SIGTERM arrives: {states:?}");
    drop(ads);
    let exit = exit_within(&mut server, t_term + Duration::from_secs(25)).await;
    assert!(exit.success(), "{exit:?}");
    // Done when the client closed, not at the end of the grace.
    assert!(server.wait_log("shutdown complete", Duration::from_secs(5)), "{}", server.logs());
    eprintln!("FAULTS slow link: {states:?} then {:?} {ended:.2?} after SIGTERM; exit after {:.2?}", status.code(), t_term.elapsed());
}
