//! [`parse_remembering`] gives what a whole parse gives, edit after edit, and parses only what
//! changed where it can.
use std::path::Path;
use std::sync::Arc;

use super::{parse_after, parse_remembering, Limits, Memo};
use crate::model;

const PATH: &str = "registry.yaml";

/// A registry in several of the styles YAML allows: compact and indented lists, flow and block
/// maps, quoted and plain scalars, comments between items, an item starting on its own line.
fn registry(services: usize, bump: &[(usize, &str)]) -> String {
    let mut out = String::from("# a registry\nnamespaces:\n");
    for ns in 0..3 {
        out.push_str(&format!("  - name: ns-{ns}\n    type: HTTP\n    services:\n"));
        // The second namespace lists its services at the key's column.
        let item = if ns == 1 { "    " } else { "      " };
        for s in 0..services {
            let k = ns * services + s;
            let ip = bump.iter().find(|(i, _)| *i == k).map_or_else(|| format!("10.0.{ns}.{s}"), |(_, ip)| ip.to_string());
            match s % 3 {
                0 => out.push_str(&format!(
                    "{item}- name: svc-{s}\n{item}  instances:\n{item}    - id: i-{s}\n{item}      attributes: {{AWS_INSTANCE_IPV4: {ip}, AWS_INSTANCE_PORT: 8080}}\n"
                )),
                1 => out.push_str(&format!(
                    "{item}# service {s}\n{item}-\n{item}  name: \"svc-{s}\"\n{item}  attributes:\n{item}    note: 'a \"quoted\" note'\n{item}  instances:\n{item}  - id: i-{s}\n{item}    healthStatus: HEALTHY\n{item}    attributes:\n{item}      AWS_INSTANCE_IPV4: \"{ip}\"\n\n"
                )),
                _ => out.push_str(&format!("{item}- {{name: svc-{s}, instances: [{{id: i-{s}, attributes: {{AWS_INSTANCE_IPV4: {ip}}}}}]}}\n")),
            }
        }
    }
    out
}

/// Parses `text` after the version `memo` and `served` came from, checks the result against a
/// whole parse, and returns it with whether only the changed services were parsed.
fn step(memo: &mut Memo, served: &mut Option<model::Snapshot>, text: &str, limits: &Limits) -> Result<bool, String> {
    let path = Path::new(PATH);
    let whole = parse_after(path, text, limits, None).map_err(|e| e.to_string());
    let got = parse_remembering(path, text, limits, served.as_ref(), memo).map_err(|e| e.to_string());
    assert_eq!(got, whole, "remembering parse differs from a whole parse of:\n{text}");
    let shortened = memo.shortened;
    if let Ok(snap) = got {
        *served = Some(snap);
    }
    whole.map(|_| shortened)
}

fn shared_with(a: &model::Snapshot, b: &model::Snapshot) -> usize {
    let all = |s: &model::Snapshot| s.namespaces.iter().flat_map(|n| n.services.clone()).collect::<Vec<_>>();
    let before = all(a);
    all(b).iter().filter(|s| before.iter().any(|p| Arc::ptr_eq(p, s))).count()
}

#[test]
fn an_edit_parses_only_what_changed_and_reads_the_same() {
    let limits = Limits::default();
    let (mut memo, mut served) = (Memo::default(), None);
    let base = registry(9, &[]);
    assert_eq!(step(&mut memo, &mut served, &base, &limits), Ok(false), "the first parse is whole");
    assert_eq!(memo.remembered_services(), 27);

    // One address in each style: parsed alone, everything else is the served `Arc`.
    for k in [0, 10, 23] {
        let before = served.clone().unwrap();
        let text = registry(9, &[(k, "192.168.1.1")]);
        assert_eq!(step(&mut memo, &mut served, &text, &limits), Ok(true), "edit of service {k}");
        assert_eq!(shared_with(&before, served.as_ref().unwrap()), 26);
        let back = registry(9, &[]);
        assert_eq!(step(&mut memo, &mut served, &back, &limits), Ok(true));
    }

    // A service added, one removed, two swapped, a comment: still only what changed.
    let added = base.replace(
        "    services:\n    - name: svc-0\n",
        "    services:\n    - name: svc-new\n    - name: svc-0\n",
    );
    assert_ne!(added, base);
    assert_eq!(step(&mut memo, &mut served, &added, &limits), Ok(true));
    assert_eq!(served.as_ref().unwrap().service_count(), 28);
    let removed = base.replace("      - {name: svc-2, instances: [{id: i-2, attributes: {AWS_INSTANCE_IPV4: 10.0.0.2}}]}\n", "");
    assert_eq!(step(&mut memo, &mut served, &removed, &limits), Ok(true));
    assert_eq!(served.as_ref().unwrap().service_count(), 26);
    let commented = base.replace("# service 4\n", "# service four\n");
    assert_eq!(step(&mut memo, &mut served, &commented, &limits), Ok(true));

    // A namespace's own field: the skeleton moved, parsed whole.
    let retyped = base.replacen("    type: HTTP\n", "    type: DNS_PRIVATE\n", 1);
    assert_eq!(step(&mut memo, &mut served, &retyped, &limits), Ok(false));
    // And the version after it is shortened again.
    assert_eq!(step(&mut memo, &mut served, &base.replacen("    type: HTTP\n", "    type: DNS_PRIVATE\n", 1).replace("10.0.2.5", "10.9.9.9"), &limits), Ok(true));
}

#[test]
fn errors_are_the_whole_parses_and_the_served_memo_stays() {
    let limits = Limits::default();
    let (mut memo, mut served) = (Memo::default(), None);
    let base = registry(6, &[]);
    step(&mut memo, &mut served, &base, &limits).unwrap();
    let broken = [
        // A YAML error in a changed service: the position is the file's.
        base.replace("{name: svc-2,", "{name: svc-2,,"),
        // A service name twice in a namespace (the other copy unchanged).
        base.replace("name: svc-5,", "name: svc-2,"),
        // An unknown field.
        base.replace("  name: \"svc-1\"\n", "  name: \"svc-1\"\n      colour: red\n"),
        // A bad instance in a changed service.
        base.replace("id: i-3\n", "id: \"\"\n"),
    ];
    for text in &broken {
        assert_ne!(text, &base);
        let err = step(&mut memo, &mut served, text, &limits).unwrap_err();
        assert!(!err.contains("cloudmap-mcp-unchanged"), "{err}");
        // After the refused edit, the memo still describes the served version.
        assert_eq!(step(&mut memo, &mut served, &base.replace("10.0.0.0", "10.0.0.99"), &limits), Ok(true));
        step(&mut memo, &mut served, &base, &limits).unwrap();
    }
    let err = step(&mut memo, &mut served, &broken[0], &limits).unwrap_err();
    assert!(err.contains("line "), "{err}");
}

#[test]
fn caps_count_the_services_not_parsed_again() {
    let base = registry(6, &[]);
    // 18 services with one instance each.
    let limits = Limits { max_instances: 18, max_services: 18, ..Limits::default() };
    let (mut memo, mut served) = (Memo::default(), None);
    step(&mut memo, &mut served, &base, &limits).unwrap();
    let extra_instance = base.replace(
        "[{id: i-2, attributes: {AWS_INSTANCE_IPV4: 10.0.0.2}}]",
        "[{id: i-2, attributes: {AWS_INSTANCE_IPV4: 10.0.0.2}}, {id: i-2b}]",
    );
    let err = step(&mut memo, &mut served, &extra_instance, &limits).unwrap_err();
    assert!(err.contains("more than 18 instances"), "{err}");
    let extra_service = base.replace(
        "      - {name: svc-2,",
        "      - {name: svc-2b}\n      - {name: svc-2,",
    );
    let err = step(&mut memo, &mut served, &extra_service, &limits).unwrap_err();
    assert!(err.contains("more than 18 services"), "{err}");
}

#[test]
fn aliases_and_yaml_flow_style_are_always_parsed_whole() {
    let limits = Limits::default();
    let (mut memo, mut served) = (Memo::default(), None);
    let aliased = "namespaces:\n  - name: a\n    type: HTTP\n    services:\n      - name: s1\n        attributes: &shared {team: x}\n      - name: s2\n        attributes: *shared\n";
    step(&mut memo, &mut served, aliased, &limits).unwrap();
    assert_eq!(memo.remembered_services(), 0);
    let edited = aliased.replace("team: x", "team: y");
    assert_eq!(step(&mut memo, &mut served, &edited, &limits), Ok(false));
    let s2 = served.as_ref().unwrap().namespaces[0].services.iter().find(|s| s.name == "s2").unwrap().clone();
    assert_eq!(s2.attributes.get("team").map(String::as_str), Some("y"));

    // Looks like JSON, is YAML: JSON's pieces are not remembered for the YAML parser.
    let flow = r#"{"namespaces": [{"name": "a", "type": "HTTP", "services": [{"name": 's1'}, {"name": "s2"}]}]}"#;
    assert_eq!(step(&mut memo, &mut served, flow, &limits), Ok(false));
    assert_eq!(memo.remembered_services(), 0);
    assert_eq!(step(&mut memo, &mut served, &flow.replace("s2", "s3"), &limits), Ok(false));
}

/// The registry of [`registry`] as JSON, in one line or pretty-printed.
fn registry_json(services: usize, bump: &[(usize, &str)], pretty: bool) -> String {
    let yaml = registry(services, bump);
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    if pretty { serde_json::to_string_pretty(&value).unwrap() } else { serde_json::to_string(&value).unwrap() }
}

#[test]
fn json_edits_parse_only_what_changed_and_read_the_same() {
    let limits = Limits::default();
    for pretty in [false, true] {
        let (mut memo, mut served) = (Memo::default(), None);
        let base = registry_json(9, &[], pretty);
        assert_eq!(step(&mut memo, &mut served, &base, &limits), Ok(false));
        assert_eq!(memo.remembered_services(), 27, "pretty: {pretty}");
        for k in [0, 13, 26] {
            let before = served.clone().unwrap();
            let text = registry_json(9, &[(0, "192.168.7.7"), (13, "192.168.7.7"), (26, "192.168.7.7")][..=k / 13], pretty);
            assert_eq!(step(&mut memo, &mut served, &text, &limits), Ok(true), "edit of service {k}");
            assert_eq!(shared_with(&before, served.as_ref().unwrap()), 26);
        }
        // A service removed (its comma with it), then added back.
        let value: serde_json::Value = serde_json::from_str(&base).unwrap();
        let mut fewer = value.clone();
        fewer["namespaces"][1]["services"].as_array_mut().unwrap().remove(4);
        let fewer = if pretty { serde_json::to_string_pretty(&fewer) } else { serde_json::to_string(&fewer) }.unwrap();
        assert_eq!(step(&mut memo, &mut served, &fewer, &limits), Ok(true));
        assert_eq!(served.as_ref().unwrap().service_count(), 26);
        assert_eq!(step(&mut memo, &mut served, &base, &limits), Ok(true));
        // A namespace field: whole.
        assert_eq!(step(&mut memo, &mut served, &base.replacen("HTTP", "DNS_PRIVATE", 1), &limits), Ok(false));
        // Broken JSON in a changed service: the whole parse's error (it falls back to YAML).
        let broken = base.replacen("\"i-3\"", "\"i-3", 1);
        assert!(step(&mut memo, &mut served, &broken, &limits).is_err());
    }
}

#[test]
fn json_scanning_refuses_what_it_cannot_cut() {
    use super::chunks::split;
    // Strings holding brackets, braces and escaped quotes do not confuse it.
    let text = r#"{"namespaces":[{"name":"a\"]}","type":"HTTP","services":[{"name":"s[1]"},{"name":"s{2}\\"}]}]}"#;
    let limits = Limits::default();
    let (mut memo, mut served) = (Memo::default(), None);
    step(&mut memo, &mut served, text, &limits).unwrap();
    assert_eq!(memo.remembered_services(), 2);
    assert_eq!(step(&mut memo, &mut served, &text.replace("s[1]", "s[9]"), &limits), Ok(true));
    // An empty services array in another namespace does not stop the pairing.
    let with_empty = text.replace(r#"{"namespaces":["#, r#"{"namespaces":[{"name":"e","type":"HTTP","services":[]},"#);
    let (mut memo, mut served) = (Memo::default(), None);
    step(&mut memo, &mut served, &with_empty, &limits).unwrap();
    assert_eq!(memo.remembered_services(), 2);
    assert_eq!(step(&mut memo, &mut served, &with_empty.replace("s[1]", "s[8]"), &limits), Ok(true));
    // Not JSON's nesting, or a services array of something else: not cut.
    assert!(split(r#"{"namespaces":[{"services":[{"name":"s"}]}"#).is_none());
    assert!(split(r#"{"namespaces":[{"services":["s"]}]}"#).is_none());
    assert!(split(r#"{"namespaces":[{"services":[[{"name":"s"}]]}]}"#).is_none());
}

/// Many random edits of several kinds, in YAML and in JSON (one line, pretty-printed); every result
/// equals a whole parse.
#[test]
fn random_edits_read_the_same_as_whole_parses() {
    let limits = Limits::default();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for format in ["yaml", "json", "json-pretty"] {
        let (mut memo, mut served) = (Memo::default(), None);
        let mut bump: Vec<(usize, String)> = Vec::new();
        let mut shortened = 0;
        for round in 0..40 {
            let k = next(30) as usize;
            bump.retain(|(i, _)| *i != k);
            bump.push((k, format!("172.16.{}.{}", round, next(250))));
            let view: Vec<(usize, &str)> = bump.iter().map(|(i, s)| (*i, s.as_str())).collect();
            let mut text = match format {
                "yaml" => registry(10, &view),
                f => registry_json(10, &view, f == "json-pretty"),
            };
            match next(5) {
                // Drop a random line (pretty JSON, YAML) or byte (one-line JSON): often broken,
                // sometimes still valid.
                0 if format == "json" => {
                    let at = next(text.len() as u64) as usize;
                    if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                        text.remove(at);
                    }
                }
                0 => {
                    let lines: Vec<&str> = text.split_inclusive('\n').collect();
                    let cut = next(lines.len() as u64) as usize;
                    text = lines.iter().enumerate().filter(|(i, _)| *i != cut).map(|(_, l)| *l).collect();
                }
                // Indent a random line by two more spaces.
                1 => {
                    let lines: Vec<&str> = text.split_inclusive('\n').collect();
                    let at = next(lines.len() as u64) as usize;
                    text = lines.iter().enumerate().map(|(i, l)| if i == at { format!("  {l}") } else { l.to_string() }).collect();
                }
                _ => {}
            }
            if step(&mut memo, &mut served, &text, &limits) == Ok(true) {
                shortened += 1;
            }
        }
        assert!(shortened > 15, "{format}: only {shortened} of 40 edits parsed only what changed");
    }
}
