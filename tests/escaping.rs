//! Registry text with line breaks (attribute keys and values, instance ids, service and namespace
//! names) printed by the real binary: text logs, `/debug/serviceentries`, `/debug/rejected` and
//! `render`. Nothing may forge a log line, end a YAML comment early or add a YAML document.
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use support::{http_get, ServerProcess};

/// Each piece of registry text below carries this after a line break; no output line may start
/// with it.
const FORGED: &str = "ERROR forged";

/// One namespace whose name breaks lines (served: its name reaches only an annotation, since the
/// host template below does not use it), one good service whose service attribute, instance
/// attribute keys and values and one instance id break lines, and one service whose name does
/// (rejected: not a DNS label).
const REGISTRY: &str = r#"
namespaces:
  - name: "shop\nERROR forged by a namespace name\n---\napiVersion: v1\nkind: Forged"
    httpName: shop
    type: HTTP
    services:
      - name: web
        attributes:
          "cloudmap-mcp/vip\nERROR forged by a service attribute key\n# ": "true\r\nERROR forged by a service attribute value"
        instances:
          - id: web-1
            attributes:
              AWS_INSTANCE_IPV4: 10.0.0.1
              AWS_INSTANCE_PORT: "8080"
              "team\nERROR forged by an attribute key\n---\nkind: Forged": "x"
              app: "a\r\nERROR forged by an attribute value\n# kind: Forged"
              "protocol": "gopher\nERROR forged by a protocol value"
          - id: "web-2\nERROR forged by an instance id\n---\nkind: Forged"
            attributes:
              AWS_INSTANCE_PORT: "8080"
      - name: "api\nERROR forged by a service name\n---\napiVersion: v1\nkind: Forged"
        instances:
          - id: api-1
            attributes: {AWS_INSTANCE_IPV4: 10.0.0.2}
"#;

const NAMESPACE: &str = "shop\nERROR forged by a namespace name\n---\napiVersion: v1\nkind: Forged";

#[derive(Deserialize)]
struct Object {
    kind: String,
    metadata: Meta,
    spec: serde_yaml::Value,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    annotations: std::collections::BTreeMap<String, String>,
}

/// The documents of a multi-document YAML text; panics if it does not parse.
fn documents(yaml: &str) -> Vec<Object> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Object::deserialize(d).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{yaml}")))
        .collect()
}

/// Checks the YAML (ServiceEntries and comments) rendered from [`REGISTRY`]; returns its comment lines.
fn check_yaml(yaml: &str) -> Vec<&str> {
    let docs = documents(yaml);
    assert_eq!(docs.len(), 1, "exactly one ServiceEntry (web): {yaml}");
    let se = &docs[0];
    assert_eq!(se.kind, "ServiceEntry");
    assert_eq!(se.metadata.name, "cloudmap-web.corp.example");
    assert_eq!(se.metadata.annotations["cloudmap-mcp/namespace"], NAMESPACE, "the namespace name round-trips exactly");
    assert_eq!(se.spec["hosts"][0].as_str(), Some("web.corp.example"));
    let eps = se.spec["endpoints"].as_sequence().expect("endpoints");
    assert_eq!(eps.len(), 1, "web-1 only (web-2 has no address)");
    assert_eq!(eps[0]["address"].as_str(), Some("10.0.0.1"));
    assert!(eps[0].get("labels").is_none(), "no attribute was a valid label: {:?}", eps[0]);
    let comments: Vec<&str> = yaml.lines().filter(|l| l.starts_with('#')).collect();
    for l in yaml.lines() {
        assert!(!l.starts_with(FORGED) && !l.starts_with("kind: Forged"), "forged line {l:?} in\n{yaml}");
    }
    comments
}

#[test]
fn registry_text_with_line_breaks_is_escaped_everywhere_it_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, REGISTRY).unwrap();
    let path = path.to_str().unwrap();
    let server = ServerProcess::start_text_logs(&["--registry-file", path, "--host-template", "{service}.corp.example"], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(server.admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready: {}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The debug YAML parses into exactly the expected document; each reason is one comment line.
    let (code, yaml) = http_get(server.admin, "/debug/serviceentries");
    assert_eq!(code, 200, "{yaml}");
    let comments = check_yaml(&yaml);
    let rejected_line = comments.iter().find(|l| l.starts_with("# rejected ")).expect("the api service is rejected");
    assert!(rejected_line.contains(r"api\nERROR forged by a service name\n---\napiVersion: v1\nkind: Forged"), "{rejected_line}");
    for needle in [r"web-2\nERROR forged by an instance id", r"vip\nERROR forged by a service attribute key\n# ", r"team\nERROR forged by an attribute key"] {
        assert!(comments.iter().any(|l| l.contains(needle)), "no comment line holds {needle:?}: {comments:#?}");
    }

    // `/debug/rejected` is JSON: the text comes back exactly as registered.
    let (code, body) = http_get(server.admin, "/debug/rejected");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1, "{body}");
    assert!(body.contains(r#"api\nERROR forged by a service name"#), "JSON escapes: {body}");
    let notes = v["notes"].as_array().unwrap();
    assert!(notes.iter().any(|n| n["instance"].as_str() == Some("web-2\nERROR forged by an instance id\n---\nkind: Forged")), "{body}");
    assert_eq!(comments.len(), 1 + notes.len(), "one comment line per rejection and note: {comments:#?}");

    // Text logs: every line is an event (starts with its timestamp); the reasons were logged, escaped.
    assert!(server.wait_log(r"ERROR forged by an instance id", Duration::from_secs(10)), "{}", server.logs());
    let logs = server.logs();
    for l in logs.lines() {
        assert!(l.len() > 20 && l.as_bytes()[..4].iter().all(u8::is_ascii_digit) && &l[4..5] == "-", "a line that is not an event: {l:?}");
        assert!(!l.starts_with(FORGED), "forged log line {l:?}");
    }
    for needle in [r"api\nERROR forged by a service name", r"team\nERROR forged by an attribute key", r"vip\nERROR forged by a service attribute key"] {
        assert!(logs.contains(needle), "{needle:?} not logged (escaped): {logs}");
    }

    // `render`: ServiceEntries on stdout, the comment lines on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["render", "--registry-file", path, "--host-template", "{service}.corp.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(check_yaml(&stdout).is_empty(), "render prints comments on stderr: {stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut rendered_comments: Vec<&str> = stderr.lines().collect();
    rendered_comments.sort();
    let mut served_comments = comments.clone();
    served_comments.sort();
    assert_eq!(rendered_comments, served_comments, "render's stderr is the same comment lines, nothing else");
}
