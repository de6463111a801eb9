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
        c.args(["--exact", "bench_server_child", "--nocapture", "--test-threads", "1"]);
        c
    };
    let report = scale::run(&cfg, &launcher, &mut |line| eprintln!("{line}"));
    let table = report.render();
    eprintln!("{table}");

    let labels: Vec<&str> = report.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, scale::expected_labels(&cfg), "every row, in order");
    for r in &report.rows {
        assert_eq!(r.values.len(), cfg.sizes.len());
        for v in &r.values {
            assert!(v.is_finite() && *v >= 0.0, "{}: {v}", r.label);
        }
        if r.unit == scale::Unit::Ratio {
            assert!(r.values.iter().all(|v| *v > 0.0), "{}: ratios are positive", r.label);
        }
        assert!(table.contains(&r.label), "rendered: {}", r.label);
    }
    let idle = report.row(scale::labels::IDLE_PUSHES).unwrap();
    assert_eq!(idle.values, [0.0], "nothing is pushed while nothing changes");
    let changes = report.row(scale::labels::CHANGES).unwrap();
    assert_eq!(changes.values, [cfg.changes as f64]);
    assert!(report.row(scale::labels::BYTES).unwrap().values[0] > 0.0);
}

#[test]
fn scale_bench_arguments() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let c = scale::Config::from_args_and_env(&args(&["--bench"]), |_| None).unwrap();
    assert_eq!(c.sizes.len(), 6);
    assert_eq!(c.clients, [1, 8, 32]);
    let c = scale::Config::from_args_and_env(&args(&["--sizes", "10kx10,500x1", "--clients=1,4"]), |_| None).unwrap();
    assert_eq!(c.sizes, [scale::Size { services: 10_000, endpoints: 10 }, scale::Size { services: 500, endpoints: 1 }]);
    assert_eq!(c.clients, [1, 4]);
    let c = scale::Config::from_args_and_env(&[], |k| (k == "CLOUDMAP_MCP_BENCH_QUICK").then(|| "1".into())).unwrap();
    assert_eq!(c.reps, 1);
    assert!(scale::Config::from_args_and_env(&args(&["--nope"]), |_| None).is_err());
    assert!(scale::Config::from_args_and_env(&args(&["--sizes", "10x0"]), |_| None).is_err());
}
