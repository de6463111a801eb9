//! Settings of the source that was not chosen are a startup error, not silently ignored: Cloud Map
//! selection, polling and budget flags next to `--registry-file`, registry-file flags next to
//! `--cloudmap`. Environment variables count like flags; empty ones count as unset. Real binary.
use std::process::{Command, Output};

const REGISTRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/registry.yaml");

/// Runs the binary with `args` and exactly the `CLOUDMAP_MCP_*` variables in `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CLOUDMAP_MCP_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("run cloudmap-mcp")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cloud_map_flags_next_to_a_registry_file_are_refused() {
    for cmd in ["serve", "render"] {
        let o = run(
            &[
                cmd,
                "--registry-file",
                REGISTRY,
                "--include-namespace",
                "prod-*",
                "--exclude-service",
                "legacy",
                "--namespace-type",
                "HTTP",
                "--resync-interval",
                "30s",
            ],
            &[],
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: a usage error\n{e}");
        assert!(o.stdout.is_empty(), "{cmd}: nothing rendered");
        assert!(
            e.contains("--registry-file is given, so these Cloud Map settings would be ignored: ")
                && e.contains("--include-namespace")
                && e.contains("--exclude-service")
                && e.contains("--namespace-type")
                && e.contains("--resync-interval"),
            "{cmd}: every ignored flag named\n{e}"
        );
    }
}

#[test]
fn environment_variables_count_like_flags_and_name_the_variable() {
    let o = run(
        &["render", "--registry-file", REGISTRY],
        &[("CLOUDMAP_MCP_AWS_API_RATE", "5"), ("CLOUDMAP_MCP_REVISION_POLL_INTERVAL", "1s")],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("--aws-api-rate (from CLOUDMAP_MCP_AWS_API_RATE)"), "{e}");
    assert!(e.contains("--revision-poll-interval (from CLOUDMAP_MCP_REVISION_POLL_INTERVAL)"), "{e}");

    // The registry file itself from the environment, a Cloud Map flag on the command line.
    let o = run(&["render", "--aws-region", "eu-west-1"], &[("CLOUDMAP_MCP_REGISTRY_FILE", REGISTRY)]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("these Cloud Map settings would be ignored: --aws-region."), "{e}");
}

#[test]
fn empty_variables_and_translation_flags_are_fine() {
    // An empty variable (what a template renders for an unset value) is not a setting.
    let o = run(
        &["render", "--registry-file", REGISTRY, "--export-to", "."],
        &[("CLOUDMAP_MCP_INCLUDE_NAMESPACES", ""), ("CLOUDMAP_MCP_EXCLUDE_SERVICES", "")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("kind: ServiceEntry").count(), 3, "{out}");
}

#[test]
fn registry_file_flags_next_to_cloud_map_are_refused() {
    let o = run(&["render", "--cloudmap", "--aws-region", "us-east-1", "--registry-poll-interval", "5s"], &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--cloudmap is given, so these registry-file settings would be ignored: --registry-poll-interval"),
        "{e}"
    );
}
