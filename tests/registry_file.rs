//! The registry file parser: what it accepts, and errors that say where the problem is.
use std::path::Path;

use cloudmap_mcp::model::{HealthStatus, NamespaceType, Timestamp};
use cloudmap_mcp::source::file::{load_with, parse, parse_with, read_capped, Limits, RegistryFileError, DEFAULT_MAX_INSTANCES};

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

fn limits(max_bytes: u64, max_services: usize, max_instances: usize) -> Limits {
    Limits { max_bytes, max_services, max_instances }
}

#[test]
fn caps_count_services_and_instances_after_alias_expansion() {
    // The anchors live in the first namespace and its first service; every other namespace
    // reuses the service list, every other service the instance list.
    let bomb = |ns: usize, svcs: usize, inst: usize| {
        let mut s = String::from("namespaces:\n  - name: n0\n    type: HTTP\n    services: &s\n      - name: s0\n        instances: &i\n");
        for i in 0..inst {
            s.push_str(&format!("          - {{id: i{i}, attributes: {{AWS_INSTANCE_IPV4: 10.0.0.1, AWS_INSTANCE_PORT: 80}}}}\n"));
        }
        for i in 1..svcs {
            s.push_str(&format!("      - {{name: s{i}, instances: *i}}\n"));
        }
        for i in 1..ns {
            s.push_str(&format!("  - {{name: n{i}, type: HTTP, services: *s}}\n"));
        }
        s
    };
    // Within the caps: parsed, every alias expanded.
    let small = bomb(3, 4, 5);
    let snap = parse_with(Path::new("reg.yaml"), &small, &limits(1 << 20, 12, 60)).unwrap();
    assert_eq!((snap.service_count(), snap.instance_count()), (12, 60));
    // One more of each is refused, naming the cap and its flag.
    let e = parse_with(Path::new("reg.yaml"), &small, &limits(1 << 20, 11, 60)).unwrap_err().to_string();
    assert!(e.contains("reg.yaml") && e.contains("more than 11 services after alias expansion (--registry-max-services)"), "{e}");
    let e = parse_with(Path::new("reg.yaml"), &small, &limits(1 << 20, 12, 59)).unwrap_err().to_string();
    assert!(e.contains("more than 59 instances after alias expansion (--registry-max-instances)"), "{e}");

    // 1,000 namespaces × 1,000 services × 1,000 instances = 10⁹ instances from a 168 KB file:
    // stopped long before it could be built (it would take terabytes), by the YAML parser's own
    // alias guard (the anchored service list holds a million copied events) or by the caps.
    let huge = bomb(1000, 1000, 1000);
    assert!(huge.len() < 200_000, "{}", huge.len());
    let e = parse_with(Path::new("reg.yaml"), &huge, &Limits::default()).unwrap_err().to_string();
    assert!(e.contains("registry too large"), "{e}");
    assert!(e.contains("line "), "the position where it crossed the cap: {e}");
    // Another shape (small anchored lists, many aliases): stopped by the parser's replay guard.
    let e = parse_with(Path::new("reg.yaml"), &bomb(300, 300, 3), &Limits::default()).unwrap_err().to_string();
    assert!(e.contains("registry too large") && e.contains("line "), "{e}");
    // Without aliases the caps alone apply, as counted (`DEFAULT_MAX_INSTANCES` + 1 instances).
    let mut flat = String::from("namespaces:\n  - name: n\n    type: HTTP\n    services:\n      - name: s\n        instances:\n");
    for i in 0..=DEFAULT_MAX_INSTANCES {
        flat.push_str(&format!("          - {{id: i{i}}}\n"));
    }
    let e = parse_with(Path::new("reg.yaml"), &flat, &Limits::default()).unwrap_err().to_string();
    assert!(e.contains(&format!("more than {DEFAULT_MAX_INSTANCES} instances after alias expansion")), "{e}");
}

#[test]
fn a_string_multiplied_by_aliases_is_refused() {
    // One 60 KB value reused as 2,000 attribute values: 120 MB of strings from a 90 KB file.
    let mut s = format!(
        "namespaces:\n  - name: n\n    type: HTTP\n    services:\n      - name: s\n        instances:\n          - id: a\n            attributes: {{big: &b {}}}\n",
        "x".repeat(60_000)
    );
    s.push_str("          - id: b\n            attributes:\n");
    for i in 0..2000 {
        s.push_str(&format!("              k{i}: *b\n"));
    }
    let e = err(&s);
    assert!(e.contains("aliases expand the file's names and attributes to more than"), "{e}");
}

#[test]
fn the_size_cap_is_checked_before_parsing() {
    let text = "namespaces: []\n".repeat(100);
    let e = parse_with(Path::new("reg.yaml"), &text, &limits(1000, 10, 10)).unwrap_err();
    assert!(matches!(e, RegistryFileError::TooLarge { bytes: 1500, max: 1000, .. }), "{e:?}");
    assert!(e.to_string().contains("over the 1000-byte cap (--registry-max-bytes)"), "{e}");
    // load_with refuses before reading: a file over the cap is never held in memory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reg.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = load_with(&path, &limits(1000, 10, 10)).unwrap_err();
    assert!(matches!(e, RegistryFileError::TooLarge { bytes: 1500, max: 1000, .. }), "{e:?}");
    assert!(read_capped(&path, 1500).is_ok());
}
