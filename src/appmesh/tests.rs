//! Loader tests: the colorapp in all four forms gives one model; bad input fails with its position.
use std::path::{Path, PathBuf};

use super::load::{load_text, Builder};
use super::model::*;
use super::LoadError;

pub(crate) fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/appmesh/testdata").join(p)
}

pub(crate) fn load_str(name: &str, text: &str) -> Result<AppMesh, LoadError> {
    let mut b = Builder::default();
    load_text(&mut b, Path::new(name), text)?;
    Ok(b.finish())
}

/// The model without where each object was written.
fn without_origins(mut m: AppMesh) -> AppMesh {
    let o = || Origin { at: String::new() };
    m.virtual_services.iter_mut().for_each(|x| x.origin = o());
    m.virtual_nodes.iter_mut().for_each(|x| x.origin = o());
    m.virtual_gateways.iter_mut().for_each(|x| x.origin = o());
    m.gateway_routes.iter_mut().for_each(|x| x.origin = o());
    for r in &mut m.virtual_routers {
        r.origin = o();
        r.routes.iter_mut().for_each(|x| x.origin = o());
    }
    m
}

/// The model without the pods the Kubernetes form's virtual nodes select (only that form names pods).
pub(crate) fn without_workloads(mut m: AppMesh) -> AppMesh {
    m.virtual_nodes.iter_mut().for_each(|n| n.workload = None);
    m
}

pub(crate) const FORMS: [&str; 4] =
    ["colorapp/k8s.yaml", "colorapp/cfn.yaml", "colorapp/terraform.json", "colorapp/cli.json"];

#[test]
fn colorapp_in_all_four_forms_is_one_model() {
    let models: Vec<AppMesh> =
        FORMS.iter().map(|f| without_origins(super::load(&[testdata(f)], super::DEFAULT_MAX_BYTES).unwrap())).collect();
    let golden = testdata("colorapp/model.golden");
    let text = format!("{:#?}\n", models[0]);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&golden).unwrap(), "{FORMS:?}[0] differs from {golden:?}");
    let k8s = without_workloads(models[0].clone());
    for (f, m) in FORMS.iter().zip(&models).skip(1) {
        assert_eq!(&k8s, m, "{f} gives another model than {} (its pod selectors aside)", FORMS[0]);
    }
    let m = &models[0];
    let front = m.virtual_nodes.iter().find(|n| n.name.starts_with("front")).unwrap();
    assert_eq!(
        front.workload,
        Some(Workload::Labels {
            namespace: "howto-k8s-cloudmap".into(),
            labels: [("app".to_string(), "front".to_string())].into()
        })
    );
    assert_eq!(m.virtual_nodes.len(), 3);
    assert_eq!(m.virtual_routers[0].routes.len(), 2);
    assert_eq!(m.gateway_routes[0].gateway, "ingress-gw");
    assert!(m.orphan_routes.is_empty());
}

#[test]
fn a_directory_loads_every_file_and_a_repeated_object_is_an_error() {
    let e = super::load(&[testdata("colorapp")], super::DEFAULT_MAX_BYTES).unwrap_err().to_string();
    assert!(e.contains("is defined twice"), "{e}");
}

fn err(name: &str, text: &str) -> String {
    load_str(name, text).unwrap_err().to_string()
}

#[test]
fn unknown_fields_are_errors_with_their_position_in_every_form() {
    let k8s = std::fs::read_to_string(testdata("colorapp/k8s.yaml"))
        .unwrap()
        .replace("      weight: 1\n", "      weight: 1\n              wieght: 2\n");
    let e = err("k8s.yaml", &k8s);
    assert!(e.contains("unknown field \"wieght\"") && e.contains("k8s.yaml: line 107"), "{e}");
    let cfn = std::fs::read_to_string(testdata("colorapp/cfn.yaml"))
        .unwrap()
        .replace("MaxRetries: 3", "MaxRetries: 3\n            MaxRetry: 3");
    let e = err("cfn.yaml", &cfn);
    assert!(e.contains("unknown field \"MaxRetry\"") && e.contains("line 1"), "{e}");
    let tf = std::fs::read_to_string(testdata("colorapp/terraform.json"))
        .unwrap()
        .replace("\"max_retries\": 3", "\"max_retries\": 3, \"max_retry\": 1");
    assert!(err("tf.json", &tf).contains("unknown field \"max_retry\""));
    let cli = std::fs::read_to_string(testdata("colorapp/cli.json"))
        .unwrap()
        .replace("\"maxRetries\": 3", "\"maxRetries\": 3, \"maxretries\": 3");
    assert!(err("cli.json", &cli).contains("unknown field \"maxretries\""));
    // Terraform's null attributes of its own schema are not unknown fields.
    let tf = std::fs::read_to_string(testdata("colorapp/terraform.json"))
        .unwrap()
        .replace("\"max_retries\": 3", "\"max_retries\": 3, \"future_attribute\": null");
    assert!(load_str("tf.json", &tf).is_ok());
}

#[test]
fn other_kubernetes_kinds_are_skipped_unread() {
    let m =
        load_str("k.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {anything: [1, 2]}\n")
            .unwrap();
    assert!(m.is_empty());
    let e = err("k.yaml", "apiVersion: appmesh.k8s.aws/v1beta1\nkind: VirtualNode\nmetadata: {name: x}\nspec: {}\n");
    assert!(e.contains("only appmesh.k8s.aws/v1beta2"), "{e}");
}

#[test]
fn cloudformation_reference_cycles_and_missing_parameters_are_errors() {
    let t = "Resources:\n  A:\n    Type: AWS::AppMesh::VirtualNode\n    Properties:\n      MeshName: m\n      VirtualNodeName: !GetAtt B.VirtualNodeName\n      Spec: {}\n  B:\n    Type: AWS::AppMesh::VirtualNode\n    Properties:\n      MeshName: m\n      VirtualNodeName: !Sub '${A.VirtualNodeName}-b'\n      Spec: {}\n";
    let e = err("t.yaml", t);
    assert!(e.contains("cycle of references: A -> B -> A") || e.contains("cycle of references: B -> A -> B"), "{e}");
    assert!(e.contains("t.yaml: line 6"), "{e}");
    let t = "Parameters: {P: {Type: String}}\nResources:\n  A:\n    Type: AWS::AppMesh::VirtualNode\n    Properties: {MeshName: !Ref P, VirtualNodeName: a, Spec: {}}\n";
    assert!(err("t.yaml", t).contains("parameter P has no Default"));
    let t = "Resources:\n  A:\n    Type: AWS::AppMesh::VirtualNode\n    Properties: {MeshName: !ImportValue x, VirtualNodeName: a, Spec: {}}\n";
    assert!(err("t.yaml", t).contains("ImportValue is not supported"));
}

#[test]
fn references_to_missing_objects_load_and_stay_named() {
    let m = load_str(
        "r.json",
        r#"{"meshName": "m", "virtualRouterName": "gone", "routeName": "r", "spec": {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "nope", "weight": 0}]}}}}"#,
    )
    .unwrap();
    assert_eq!(m.orphan_routes.len(), 1);
    assert_eq!(m.orphan_routes[0].0, "gone");
    assert_eq!(m.orphan_routes[0].1.targets[0].virtual_node, "nope");
    assert!(err("r.json", r#"{"meshName": "m", "virtualRouterName": "x", "routeName": "r", "spec": {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "n", "weight": 101}]}}}}"#)
        .contains("weight 101 is over 100"));
}

#[test]
fn a_file_over_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.yaml");
    std::fs::write(&p, vec![b'#'; 2048]).unwrap();
    let e = super::load(&[p], 1024).unwrap_err().to_string();
    assert!(e.contains("2048 bytes, over the 1024-byte cap"), "{e}");
}
