//! The registry file parser: what it accepts, and errors that say where the problem is.
use std::path::Path;

use cloudmap_mcp::model::{HealthStatus, NamespaceType, Timestamp};
use cloudmap_mcp::source::file::{parse, RegistryFileError};

fn p(text: &str) -> Result<cloudmap_mcp::model::Snapshot, RegistryFileError> {
    parse(Path::new("reg.yaml"), text)
}

#[test]
fn parses_and_normalizes() {
    let s = p(r#"
namespaces:
  - name: z-ns
    type: DNS_PUBLIC
    httpName: z-http
    services:
      - name: b
        createDate: "2021-06-01T12:00:00.5+02:00"
        instances:
          - id: i2
            healthStatus: UNHEALTHY
            attributes: {AWS_INSTANCE_PORT: 8080, flag: true, ratio: 0.5}
          - id: i1
            attributes: {AWS_INSTANCE_IPV4: 10.0.0.1}
      - name: a
  - name: a-ns
    type: HTTP
"#)
    .unwrap();
    assert_eq!(s.namespaces.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a-ns", "z-ns"]);
    let z = &s.namespaces[1];
    assert_eq!(z.kind, NamespaceType::DnsPublic);
    assert_eq!(z.http_name, "z-http");
    assert_eq!(s.namespaces[0].http_name, "a-ns", "httpName defaults to the name");
    assert_eq!(z.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let b = &z.services[1];
    assert_eq!(b.create_date, Some(Timestamp { seconds: 1_622_541_600, nanos: 500_000_000 }));
    assert_eq!(b.instances[0].id, "i1");
    assert_eq!(b.instances[0].health, HealthStatus::Unknown);
    let i2 = &b.instances[1];
    assert_eq!(i2.health, HealthStatus::Unhealthy);
    assert_eq!(i2.attributes["AWS_INSTANCE_PORT"], "8080", "numbers are read as strings");
    assert_eq!(i2.attributes["flag"], "true");
    assert_eq!(i2.attributes["ratio"], "0.5");
}

#[test]
fn empty_file_is_an_empty_registry() {
    assert_eq!(p("").unwrap().namespaces.len(), 0);
    assert_eq!(p("# only a comment\n").unwrap().namespaces.len(), 0);
}

fn err(text: &str) -> String {
    p(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_file_and_the_position() {
    let e = err("namespaces:\n  - name: a\n    type: HTTP\n    servces: []\n");
    assert!(e.contains("reg.yaml") && e.contains("unknown field `servces`") && e.contains("line 4"), "{e}");
    let e = err("namespaces:\n  - name: a\n    type: CLOUD\n");
    assert!(e.contains("unknown variant `CLOUD`") && e.contains("line 3"), "{e}");
    let e = err("namespaces: [\n");
    assert!(e.contains("reg.yaml") && e.contains("line"), "{e}");
}

#[test]
fn semantic_errors_name_the_place() {
    let e = err("namespaces:\n  - {name: a, type: HTTP}\n  - {name: a, type: HTTP}\n");
    assert!(e.contains("namespaces[1]") && e.contains("appears twice"), "{e}");
    let e = err("namespaces:\n  - name: a\n    type: HTTP\n    services: [{name: s}, {name: s}]\n");
    assert!(e.contains("services[1]") && e.contains("appears twice"), "{e}");
    let e = err("namespaces:\n  - name: a\n    type: HTTP\n    services:\n      - name: s\n        instances: [{id: x}, {id: x}]\n");
    assert!(e.contains("instances[1]") && e.contains("appears twice"), "{e}");
    let e = err("namespaces:\n  - name: a\n    type: HTTP\n    services: [{name: s, createDate: yesterday}]\n");
    assert!(e.contains("createDate \"yesterday\""), "{e}");
    let e = err("namespaces:\n  - {name: '', type: HTTP}\n");
    assert!(e.contains("namespace name is empty"), "{e}");
}
