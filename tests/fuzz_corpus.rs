//! The fuzz targets' bodies (`cloudmap_mcp::fuzzing`, run by cargo-fuzz from `fuzz/`) over a fixed and
//! a generated corpus, so `cargo test` checks the same invariants without the fuzzer:
//! - `fuzz/seeds/<target>/*`: hand-written seeds (also the fuzzer's starting corpus);
//! - `fuzz/regressions/<target>/*`: inputs that once crashed a target (each one a fixed bug);
//! - inputs generated here from a fixed seed: truncations and byte mutations of the example registry
//!   files, pathological YAML, and pseudo-random byte strings.
//!
//! `CLOUDMAP_MCP_FUZZ_CORPUS_SCALE=N` multiplies the generated inputs (default 1).
use std::path::{Path, PathBuf};

use cloudmap_mcp::fuzzing;

/// splitmix64: a fixed, dependency-free generator so every run checks the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn scale() -> usize {
    std::env::var("CLOUDMAP_MCP_FUZZ_CORPUS_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`.
fn stored(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = root().join("fuzz").join(kind).join(target);
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.path().is_file() && e.file_name() != "README.md" {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs `f` on `input`; on a panic, writes the input to a file and names it in the failure.
fn run(target: &str, name: &str, input: &[u8], f: fn(&[u8])) {
    let started = std::time::Instant::now();
    let result = std::panic::catch_unwind(|| f(input));
    if started.elapsed() > std::time::Duration::from_millis(200) {
        eprintln!("slow input: {target} {name}: {:?}", started.elapsed());
    }
    if let Err(e) = result {
        let dir = std::env::temp_dir().join("cloudmap-mcp-fuzz-failures").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name.replace(['/', ' '], "_"));
        std::fs::write(&path, input).unwrap();
        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!(
            "fuzz target {target} failed on input {name} (saved to {}; copy it to fuzz/regressions/{target}/): {}",
            path.display(),
            msg.unwrap_or_default()
        );
    }
}

fn registry_texts() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("examples/registry.yaml".to_string(), std::fs::read(root().join("examples/registry.yaml")).unwrap())];
    let testdata = root().join("src/translate/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&testdata).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for p in files {
        if p.to_string_lossy().ends_with(".registry.yaml") {
            out.push((p.strip_prefix(root()).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// YAML that has broken parsers: deep nesting, alias expansion, odd scalars and tags.
fn pathological_yaml() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, String)> = vec![
        ("deep-seq".into(), format!("namespaces: {}{}", "[".repeat(50_000), "]".repeat(50_000))),
        ("deep-map".into(), format!("namespaces: {}1{}", "{a: ".repeat(20_000), "}".repeat(20_000))),
        ("deep-block".into(), (0..500).map(|i| format!("{}- \n", "  ".repeat(i))).collect()),
        ("unclosed".into(), "namespaces: [{name: a, type: HTTP, services: [".into()),
        (
            "alias-bomb".into(),
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nnamespaces: *g\n".into(),
        ),
        (
            "alias-services".into(),
            "x: &svc {name: s, instances: [{id: i, attributes: {AWS_INSTANCE_IPV4: 10.0.0.1}}]}\nnamespaces: [{name: a, type: HTTP, services: [*svc]}]\n".into(),
        ),
        ("merge-key".into(), "namespaces:\n  - <<: {name: a}\n    type: HTTP\n".into()),
        (
            "odd-scalars".into(),
            "namespaces:\n  - name: a\n    type: HTTP\n    services:\n      - name: s\n        instances:\n          - id: i\n            attributes: {AWS_INSTANCE_PORT: 1e400, x: .nan, y: -.inf, z: ~, w: 0x1F, v: 0o17, u: 1_000, t: !!binary aGk=, s: [1], r: {a: b}}\n".into(),
        ),
        ("dup-keys".into(), "namespaces: []\nnamespaces: []\n".into()),
        ("tags".into(), "!!map {namespaces: !!seq [!!map {name: !!str 1, type: HTTP}]}".into()),
        ("custom-tag".into(), "namespaces: !Ref x\n".into()),
        ("multi-doc".into(), "namespaces: []\n---\nnamespaces: []\n".into()),
        ("bom".into(), "\u{feff}namespaces: []\n".into()),
        ("nul".into(), "namespaces:\0\n".into()),
        ("numbers-as-names".into(), "namespaces: [{name: 1, type: HTTP, services: [{name: 2.5, instances: [{id: true}]}]}]".into()),
        ("date-edge".into(), "namespaces: [{name: a, type: HTTP, services: [{name: s, createDate: \"9999-12-31T23:59:60Z\"}]}]".into()),
        ("date-neg".into(), "namespaces: [{name: a, type: HTTP, services: [{name: s, createDate: \"0000-01-01T00:00:00+23:59\"}]}]".into()),
        ("long-line".into(), format!("namespaces: [{{name: {}, type: HTTP}}]", "a".repeat(200_000))),
        ("many-instances".into(), {
            let mut s = "namespaces:\n- name: a\n  type: HTTP\n  services:\n  - name: s\n    instances:\n".to_string();
            for i in 0..1_000 {
                s.push_str(&format!("    - {{id: i{i}, attributes: {{AWS_INSTANCE_IPV4: 10.0.{}.{}, AWS_INSTANCE_PORT: {}}}}}\n", i / 256, i % 256, 1 + i % 7));
            }
            s
        }),
    ];
    v.push(("invalid-utf8".into(), String::new()));
    let mut out: Vec<(String, Vec<u8>)> = v.into_iter().map(|(n, s)| (n, s.into_bytes())).collect();
    out.last_mut().unwrap().1 = b"namespaces: [{name: \xff\xfe, type: HTTP}]".to_vec();
    out
}

#[test]
fn registry_file_target_over_corpus() {
    let mut count = 0;
    for (path, data) in stored("registry_file") {
        run("registry_file", &path.display().to_string(), &data, fuzzing::registry_file);
        count += 1;
    }
    for (name, data) in pathological_yaml() {
        run("registry_file", &name, &data, fuzzing::registry_file);
        count += 1;
    }
    let mut rng = Rng(0x5eed_0001);
    for (name, text) in registry_texts() {
        // Truncation points (a file cut off mid-write): at, before and after every line end, and
        // every 11th byte (every byte with CLOUDMAP_MCP_FUZZ_CORPUS_SCALE > 1).
        let stride = if scale() > 1 { 1 } else { 11 };
        let mut cuts: Vec<usize> = (0..=text.len()).step_by(stride).collect();
        for (i, b) in text.iter().enumerate() {
            if *b == b'\n' {
                cuts.extend([i, i + 1, (i + 2).min(text.len())]);
            }
        }
        cuts.sort();
        cuts.dedup();
        for cut in cuts {
            run("registry_file", &format!("{name}-cut-{cut}"), &text[..cut], fuzzing::registry_file);
            count += 1;
        }
        // Byte mutations.
        for i in 0..100 * scale() {
            let mut m = text.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(m.len());
                match rng.below(3) {
                    0 => m[at] = rng.next() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => {
                        let b = *b"-:[]{}&*!|>'\"#\n\t 0a.";
                        m.insert(at, b[rng.below(b.len())]);
                    }
                }
            }
            run("registry_file", &format!("{name}-mut-{i}"), &m, fuzzing::registry_file);
            count += 1;
        }
    }
    eprintln!("registry_file: {count} inputs");
    assert!(count > 500);
}

#[test]
fn translate_target_over_corpus() {
    let mut count = 0;
    for (path, data) in stored("translate") {
        run("translate", &path.display().to_string(), &data, fuzzing::translate);
        count += 1;
    }
    let mut rng = Rng(0x5eed_0002);
    for i in 0..1500 * scale() {
        let len = rng.below(600);
        let data = rng.bytes(len);
        run("translate", &format!("random-{i}"), &data, fuzzing::translate);
        count += 1;
    }
    eprintln!("translate: {count} inputs");
}

#[test]
fn stream_target_over_corpus() {
    let mut count = 0;
    for (path, data) in stored("stream") {
        run("stream", &path.display().to_string(), &data, fuzzing::stream);
        count += 1;
    }
    let mut rng = Rng(0x5eed_0003);
    for i in 0..3000 * scale() {
        let len = rng.below(400);
        let mut data = rng.bytes(len);
        // Mostly generous limits, so long sequences run before a limit ends the stream.
        if !data.is_empty() && rng.below(2) == 0 {
            data[0] = 7;
        }
        run("stream", &format!("random-{i}"), &data, fuzzing::stream);
        count += 1;
    }
    eprintln!("stream: {count} inputs");
}

/// The seeds directory exists for each target (the fuzzer starts from it).
#[test]
fn every_target_has_seeds() {
    for t in ["registry_file", "translate", "stream"] {
        assert!(!stored(t).is_empty(), "fuzz/seeds/{t} is empty");
        assert!(Path::new(&root().join("fuzz/fuzz_targets").join(format!("{t}.rs"))).exists());
    }
}
