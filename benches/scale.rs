//! `cargo bench --bench scale [-- --quick | --tiny | --sizes 10000x10 ...]`: the scale benchmark
//! (see `benches/scale/lib.rs` and BENCHMARKS.md). Prints one table per run.
#[path = "scale/lib.rs"]
mod scale;

fn main() {
    // Re-run as a benchmark server child (see `scale::child_main`).
    if scale::child_main() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match scale::Config::from_args_and_env(&args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let exe = std::env::current_exe().expect("current executable");
    let launcher = move || std::process::Command::new(&exe);
    let report = scale::run(&cfg, &launcher, &mut |line| eprintln!("{line}"));
    println!("{}", report.render());
}
