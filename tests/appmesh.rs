//! `render --appmesh-file` against the real binary: the colorapp in every form renders the same
//! Istio objects next to the ServiceEntries; bad App Mesh input fails with its position.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/appmesh/testdata").join(p)
}

fn render(appmesh: &[&Path]) -> Output {
    let mut args = vec!["render".to_string(), "--registry-file".into(), testdata("colorapp.registry.yaml").display().to_string()];
    for p in appmesh {
        args.push("--appmesh-file".into());
        args.push(p.display().to_string());
    }
    Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp")).args(&args).env_remove("CLOUDMAP_MCP_APPMESH_FILES").output().unwrap()
}

#[test]
fn render_prints_the_colorapp_routing_with_the_report_for_every_form() {
    let mut outputs = Vec::new();
    for f in ["colorapp/k8s.yaml", "colorapp/cfn.yaml", "colorapp/terraform.json", "colorapp/cli.json"] {
        let out = render(&[&testdata(f)]);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        outputs.push(String::from_utf8(out.stdout).unwrap());
    }
    assert!(outputs.iter().all(|o| *o == outputs[0]), "the four forms render differently");
    let text = &outputs[0];
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(text).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService", "VirtualService"], "{text}");
    // The imported mesh's 8080 is HTTP on the served ServiceEntry.
    assert_eq!(docs[0]["spec"]["ports"][0]["protocol"], "HTTP", "{text}");
    assert!(text.contains("# App Mesh migration report"));
    assert!(text.contains("#   VirtualNode front: approximated\n#     - active health check dropped"), "{text}");
    for d in &docs[1..] {
        assert_eq!(d["apiVersion"], "networking.istio.io/v1");
        assert!(d["metadata"]["annotations"]["cloudmap-mcp/appmesh-source"].is_string(), "{d}");
    }
}

#[test]
fn render_fails_on_bad_appmesh_input_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(testdata("colorapp/k8s.yaml")).unwrap().replace("maxRetries: 3", "maxRetries: 3\n          maxRetires: 3");
    std::fs::write(&p, text).unwrap();
    let out = render(&[&p]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: line 113 column") && err.contains("unknown field \"maxRetires\""), "{err}");
    // Over the size cap: refused, not parsed.
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; 10 << 20]).unwrap();
    let out = render(&[&big]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("over the 8388608-byte cap"), "{}", String::from_utf8_lossy(&out.stderr));
}
