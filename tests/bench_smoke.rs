//! Runs the scale benchmark (benches/scale/lib.rs) at a tiny size: every part must run and every row
//! must be filled. No timing assertions: the figures of a debug build at this size mean nothing.
#[path = "../benches/scale/lib.rs"]
mod scale;

/// Hosts a benchmark server child: the smoke test re-runs this test binary with only this test
/// selected and the server role in the environment. Without that environment it does nothing.
#[test]
fn bench_server_child() {
    scale::child_main();
}

#[test]
fn scale_bench_runs_at_tiny_size() {
    let cfg = scale::Config::from_args_and_env(&["--tiny".to_string()], |_| None).unwrap();
    let exe = std::env::current_exe().unwrap();
    let launcher = move || {
        let mut c = std::process::Command::new(&exe);
        c.args([
            "--exact",
            "bench_server_child",
            "--nocapture",
            "--test-threads",
            "1",
        ]);
        c
    };
    let report = scale::run(&cfg, &launcher, &mut |line| eprintln!("{line}"));
    let table = report.render();
    eprintln!("{table}");

    let labels: Vec<&str> = report.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        scale::expected_labels(&cfg),
        "every row, in order; notes: {:?}",
        report.notes
    );
    for r in &report.rows {
        assert_eq!(r.values.len(), cfg.sizes.len());
        for v in &r.values {
            // A growth can be negative (istiod's garbage collector ran); everything else cannot.
            assert!(
                v.is_finite() && (*v >= 0.0 || r.label.contains("growth")),
                "{}: {v}",
                r.label
            );
        }
        if r.unit == scale::Unit::Ratio {
            assert!(
                r.values.iter().all(|v| *v > 0.0),
                "{}: ratios are positive",
                r.label
            );
        }
        assert!(table.contains(&r.label), "rendered: {}", r.label);
    }
    let value = |label: &str| {
        report
            .row(label)
            .unwrap_or_else(|| panic!("row {label}"))
            .values[0]
    };
    assert_eq!(
        value(scale::labels::IDLE_PUSHES),
        0.0,
        "nothing is pushed while nothing changes"
    );
    assert_eq!(value(scale::labels::CHANGES), cfg.changes as f64);
    assert!(value(scale::labels::BYTES) > 0.0);

    // The real paths: the serve binary with a registry file, and its Cloud Map poller against the
    // in-process Cloud Map API, produced every row at this size.
    use scale::{rows_file as file, rows_poller as poller};
    for f in [file::Format::Yaml, file::Format::Json] {
        assert_eq!(
            value(&file::edits(f)),
            cfg.edits as f64,
            "every registry-file edit reached the client ({f:?})"
        );
        assert!(value(&file::file_mb(f)) > 0.0);
        for rss in [file::rss_ready(f), file::rss_after(f, 1), file::peak(f)] {
            assert!(value(&rss) > 1.0, "{rss}: a real process's RSS");
        }
    }
    let hot = poller::HOT.min(cfg.sizes[0].services) as f64;
    assert_eq!(
        value(&poller::changes("api")),
        cfg.edits as f64 * hot,
        "every Cloud Map change reached the client"
    );
    assert!(
        value(&poller::calls_rounds("api")) > 0.0,
        "the poller called the in-process Cloud Map API"
    );
    assert!(value(&poller::first_sync("api")) > 0.0);
    // moto is required in CI (CLOUDMAP_MCP_REQUIRE_TOOLS=1); istiod only when it has been built.
    match report.row(&poller::changes("moto")) {
        Some(r) => assert_eq!(r.values[0], cfg.edits as f64 * hot),
        None => {
            assert!(
                std::env::var("CLOUDMAP_MCP_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "moto rows missing: {:?}",
                report.notes
            );
            assert!(
                report
                    .notes
                    .iter()
                    .any(|n| n.starts_with("moto rows skipped")),
                "{:?}",
                report.notes
            );
        }
    }
    match report.row(&scale::rows_istiod::pushes()) {
        Some(r) => assert_eq!(r.values[0], cfg.istiod_pushes as f64),
        None => assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("istiod rows skipped")),
            "{:?}",
            report.notes
        ),
    }
}

#[test]
fn scale_bench_arguments() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let c = scale::Config::from_args_and_env(&args(&["--bench"]), |_| None).unwrap();
    assert_eq!(c.sizes.len(), 6);
    assert_eq!(c.clients, [1, 8, 32]);
    let c = scale::Config::from_args_and_env(
        &args(&["--sizes", "10kx10,500x1", "--clients=1,4"]),
        |_| None,
    )
    .unwrap();
    assert_eq!(
        c.sizes,
        [
            scale::Size {
                services: 10_000,
                endpoints: 10
            },
            scale::Size {
                services: 500,
                endpoints: 1
            }
        ]
    );
    assert_eq!(c.clients, [1, 4]);
    let c = scale::Config::from_args_and_env(&[], |k| {
        (k == "CLOUDMAP_MCP_BENCH_QUICK").then(|| "1".into())
    })
    .unwrap();
    assert_eq!(c.reps, 1);
    assert!(scale::Config::from_args_and_env(&args(&["--nope"]), |_| None).is_err());
    assert!(scale::Config::from_args_and_env(&args(&["--sizes", "10x0"]), |_| None).is_err());
    let c =
        scale::Config::from_args_and_env(&args(&["--groups", "file,api", "--edits", "7"]), |_| {
            None
        })
        .unwrap();
    assert_eq!(c.groups, ["file", "api"]);
    assert_eq!(c.edits, 7);
    let ten_k = scale::Size {
        services: 10_000,
        endpoints: 10,
    };
    assert!(c.applies("file", ten_k) && c.applies("api", ten_k) && !c.applies("synthetic", ten_k));
    assert!(
        !c.applies(
            "file",
            scale::Size {
                services: 1000,
                endpoints: 10
            }
        ),
        "real paths start at 10k services by default"
    );
    assert!(
        !c.applies(
            "file",
            scale::Size {
                services: 50_000,
                endpoints: 10
            }
        ),
        "the file path stops at 100k endpoints"
    );
    let e =
        scale::Config::from_args_and_env(&args(&["--groups", "file,nope"]), |_| None).unwrap_err();
    assert!(e.contains("unknown group \"nope\""), "{e}");
}
