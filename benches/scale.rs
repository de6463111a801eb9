//! `cargo bench --bench scale [-- --quick | --tiny | --sizes 10000x10 ...]`: the scale benchmark
//! (see `benches/scale/lib.rs` and BENCHMARKS.md). Prints one table per run.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[path = "scale/lib.rs"]
mod scale;

/// The system allocator, counting live bytes (for the per-stage heap figures; one relaxed atomic
/// add per allocation).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Off in the server children, so they allocate exactly like the real server.
static COUNT: AtomicBool = AtomicBool::new(false);

fn count(delta: usize) {
    if COUNT.load(Ordering::Relaxed) {
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(l.size().wrapping_neg());
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new.wrapping_sub(l.size()));
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    // Re-run as a benchmark server child (see `scale::child_main`).
    if scale::child_main() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = match scale::Config::from_args_and_env(&args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    COUNT.store(true, Ordering::Relaxed);
    cfg.live_heap = Some(|| LIVE.load(Ordering::Relaxed));
    let exe = std::env::current_exe().expect("current executable");
    let launcher = move || std::process::Command::new(&exe);
    let report = scale::run(&cfg, &launcher, &mut |line| eprintln!("{line}"));
    println!("{}", report.render());
}
