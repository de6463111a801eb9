//! The benchmark's settings: sizes, row groups, and how much of each to measure.
use std::collections::BTreeMap;
use std::time::Duration;

/// One registry size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub services: usize,
    pub endpoints: usize,
}

impl Size {
    pub fn label(&self) -> String {
        let s = if self.services >= 1000 && self.services % 1000 == 0 {
            format!("{}k", self.services / 1000)
        } else {
            self.services.to_string()
        };
        format!("{s}×{}", self.endpoints)
    }

    pub fn parse(s: &str) -> Result<Size, String> {
        let (a, b) = s
            .trim()
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| format!("size {s:?}: use SERVICESxENDPOINTS, e.g. 10000x10"))?;
        let num = |t: &str| -> Result<usize, String> {
            let t = t.trim().to_ascii_lowercase();
            let (t, mul) = match t.strip_suffix('k') {
                Some(p) => (p.to_string(), 1000),
                None => (t, 1),
            };
            t.parse::<usize>()
                .map(|v| v * mul)
                .map_err(|_| format!("size {s:?}: {t:?} is not a number"))
        };
        let size = Size {
            services: num(a)?,
            endpoints: num(b)?,
        };
        if size.services == 0 || size.endpoints == 0 {
            return Err(format!("size {s:?}: both numbers must be at least 1"));
        }
        Ok(size)
    }
}

/// The row groups, in the order they run and print. Each measures one path (see BENCHMARKS.md).
pub const GROUPS: &[&str] = &[
    "synthetic",
    "file",
    "file-json",
    "api",
    "moto",
    "istiod",
    "pacing",
];

/// What one run measures.
#[derive(Clone, Debug)]
pub struct Config {
    pub sizes: Vec<Size>,
    /// Row groups to run (a subset of [`GROUPS`]).
    pub groups: Vec<String>,
    /// Concurrent clients of the full-push measurement.
    pub clients: Vec<usize>,
    /// Clients connected during the change-latency and idle measurements.
    pub change_clients: usize,
    /// Changes measured (fewer if `change_budget` runs out first; at least 5).
    pub changes: usize,
    pub change_budget: Duration,
    /// Repetitions of each full push (the median is reported).
    pub reps: usize,
    /// Repetitions of the in-process translate/encode timings (the median is reported).
    pub encode_reps: usize,
    pub idle: Duration,
    /// Real paths: registry-file edits, and Cloud Map refresh rounds with changes.
    pub edits: usize,
    /// Real paths: the idle CPU window.
    pub real_idle: Duration,
    /// Real paths `file`, `istiod` and `pacing` run at sizes up to this many endpoints in all.
    pub real_max_endpoints: usize,
    /// Real paths `file`, `api`, `istiod` and `pacing` run at sizes of at least this many services.
    pub real_min_services: usize,
    /// The `moto` group runs at sizes up to this many services.
    pub moto_max_services: usize,
    /// The `pacing` group: service changes per second, and for how long.
    pub churn_rate: f64,
    pub churn: Duration,
    /// istiod pushes measured for its CPU and heap per push.
    pub istiod_pushes: usize,
    /// `pacing`: isolated changes measured after the churn, each after `quiet` without changes.
    pub isolated: usize,
    pub quiet: Duration,
    /// Extra `serve` flags for the poller groups (`api`, `moto`, `pacing`); empty: the defaults.
    pub poller_args: Vec<String>,
    /// Bytes currently allocated on the heap, when the executable counts them (benches/scale.rs).
    pub live_heap: Option<fn() -> usize>,
}

impl Config {
    pub fn full() -> Config {
        Config {
            sizes: [
                (1000, 1),
                (1000, 10),
                (10_000, 1),
                (10_000, 10),
                (50_000, 1),
                (50_000, 10),
            ]
            .into_iter()
            .map(|(services, endpoints)| Size {
                services,
                endpoints,
            })
            .collect(),
            groups: GROUPS.iter().map(|g| g.to_string()).collect(),
            clients: vec![1, 8, 32],
            change_clients: 32,
            changes: 50,
            change_budget: Duration::from_secs(60),
            reps: 3,
            encode_reps: 5,
            idle: Duration::from_secs(5),
            edits: 50,
            real_idle: Duration::from_secs(10),
            real_max_endpoints: 100_000,
            real_min_services: 10_000,
            moto_max_services: 1000,
            churn_rate: 100.0,
            churn: Duration::from_secs(20),
            istiod_pushes: 10,
            isolated: 5,
            quiet: Duration::from_secs(3),
            poller_args: Vec::new(),
            live_heap: None,
        }
    }

    /// A few minutes: the two 1k sizes and 10k×10, fewer repetitions and edits.
    pub fn quick() -> Config {
        Config {
            sizes: vec![
                Size {
                    services: 1000,
                    endpoints: 1,
                },
                Size {
                    services: 1000,
                    endpoints: 10,
                },
                Size {
                    services: 10_000,
                    endpoints: 10,
                },
            ],
            changes: 20,
            change_budget: Duration::from_secs(20),
            reps: 1,
            encode_reps: 3,
            idle: Duration::from_secs(2),
            edits: 10,
            real_idle: Duration::from_secs(5),
            churn: Duration::from_secs(10),
            istiod_pushes: 5,
            ..Config::full()
        }
    }

    /// Seconds, for the test suite: proves every part runs, measures nothing meaningful.
    pub fn tiny() -> Config {
        Config {
            sizes: vec![Size {
                services: 20,
                endpoints: 2,
            }],
            groups: GROUPS.iter().map(|g| g.to_string()).collect(),
            clients: vec![1, 3],
            change_clients: 3,
            changes: 5,
            change_budget: Duration::from_secs(10),
            reps: 1,
            encode_reps: 1,
            idle: Duration::from_millis(300),
            edits: 3,
            real_idle: Duration::from_millis(500),
            real_max_endpoints: 100_000,
            real_min_services: 0,
            moto_max_services: 1000,
            churn_rate: 20.0,
            churn: Duration::from_secs(2),
            istiod_pushes: 2,
            isolated: 2,
            quiet: Duration::from_millis(500),
            // Fast polling, so that a round takes milliseconds instead of the 5 s base interval.
            poller_args: [
                "--revision-poll-interval",
                "200ms",
                "--revision-poll-max-interval",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
            live_heap: None,
        }
    }

    pub fn has(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether `group` runs at `size`.
    pub fn applies(&self, group: &str, size: Size) -> bool {
        let endpoints = size.services * size.endpoints;
        self.has(group)
            && match group {
                "file" | "file-json" | "istiod" | "pacing" => {
                    size.services >= self.real_min_services && endpoints <= self.real_max_endpoints
                }
                "api" => size.services >= self.real_min_services,
                "moto" => size.services <= self.moto_max_services,
                _ => true,
            }
    }

    pub const USAGE: &'static str = "\
usage: cargo bench --bench scale -- [--quick | --tiny] [--sizes 1000x1,10000x10] [--groups synthetic,file,...]
                                    [--clients 1,8,32] [--change-clients 32] [--changes 50]
                                    [--change-budget-secs 60] [--reps 3] [--idle-secs 5] [--edits 50]
                                    [--real-idle-secs 10] [--real-min-services 10000] [--real-max-endpoints 100000]
                                    [--moto-max-services 1000] [--churn-rate 100] [--churn-secs 20]
                                    [--istiod-pushes 10]
Groups (each a path; default all): synthetic (in-process pipeline, synthetic source, transport floor and
naive references), file (serve + YAML registry file), file-json (the same registry as JSON), api (serve + Cloud Map poller against an in-process
Cloud Map API), moto (serve + poller against moto_server), istiod (a real istiod as a client),
pacing (istiod under service churn, push pacing on and off).
Each flag also reads an environment variable CLOUDMAP_MCP_BENCH_<FLAG> (e.g. CLOUDMAP_MCP_BENCH_SIZES,
CLOUDMAP_MCP_BENCH_GROUPS, CLOUDMAP_MCP_BENCH_EDITS), and CLOUDMAP_MCP_BENCH_QUICK=1 / _TINY=1.
Default: 1k, 10k, 50k services × 1 and 10 endpoints; 1, 8, 32 clients; 50 changes with 32 clients; 50 edits.";

    const KEYS: &'static [&'static str] = &[
        "sizes",
        "groups",
        "clients",
        "change-clients",
        "changes",
        "change-budget-secs",
        "reps",
        "idle-secs",
        "edits",
        "real-idle-secs",
        "real-max-endpoints",
        "real-min-services",
        "moto-max-services",
        "churn-rate",
        "churn-secs",
        "istiod-pushes",
    ];

    /// Parses command-line arguments (`--bench`, which cargo adds, is ignored) over environment
    /// variables over the defaults.
    pub fn from_args_and_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let truthy =
            |v: Option<String>| v.is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
        let mut quick = truthy(env("CLOUDMAP_MCP_BENCH_QUICK"));
        let mut tiny = truthy(env("CLOUDMAP_MCP_BENCH_TINY"));
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for key in Self::KEYS {
            let var = format!(
                "CLOUDMAP_MCP_BENCH_{}",
                key.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(v) = env(&var) {
                values.insert(key, v);
            }
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            match flag {
                "--bench" => {}
                "--quick" => quick = true,
                "--tiny" => tiny = true,
                "-h" | "--help" => return Err(Self::USAGE.to_string()),
                f if f.starts_with("--") => {
                    let key = &f[2..];
                    let Some(k) = Self::KEYS.iter().find(|k| **k == key) else {
                        return Err(format!("unknown flag {f}\n{}", Self::USAGE));
                    };
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("{f} needs a value"))?,
                    };
                    values.insert(k, v);
                }
                other => return Err(format!("unexpected argument {other:?}\n{}", Self::USAGE)),
            }
        }
        let mut c = if tiny {
            Config::tiny()
        } else if quick {
            Config::quick()
        } else {
            Config::full()
        };
        let num = |k: &str, v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("--{k}: {v:?} is not a number"))
        };
        for (k, v) in values {
            match k {
                "sizes" => {
                    c.sizes = v
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(Size::parse)
                        .collect::<Result<_, _>>()?
                }
                "groups" => {
                    c.groups = v
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect();
                    if let Some(bad) = c.groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                        return Err(format!(
                            "--groups: unknown group {bad:?} (known: {})",
                            GROUPS.join(", ")
                        ));
                    }
                }
                "clients" => {
                    c.clients = v
                        .split(',')
                        .map(|s| {
                            s.trim()
                                .parse::<usize>()
                                .map_err(|_| format!("--clients: {s:?} is not a number"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "change-clients" => c.change_clients = num(k, &v)? as usize,
                "changes" => c.changes = num(k, &v)? as usize,
                "change-budget-secs" => c.change_budget = Duration::from_secs_f64(num(k, &v)?),
                "reps" => c.reps = (num(k, &v)? as usize).max(1),
                "idle-secs" => c.idle = Duration::from_secs_f64(num(k, &v)?),
                "edits" => c.edits = (num(k, &v)? as usize).max(1),
                "real-idle-secs" => c.real_idle = Duration::from_secs_f64(num(k, &v)?),
                "real-max-endpoints" => c.real_max_endpoints = num(k, &v)? as usize,
                "real-min-services" => c.real_min_services = num(k, &v)? as usize,
                "moto-max-services" => c.moto_max_services = num(k, &v)? as usize,
                "churn-rate" => c.churn_rate = num(k, &v)?.max(1.0),
                "churn-secs" => c.churn = Duration::from_secs_f64(num(k, &v)?),
                "istiod-pushes" => c.istiod_pushes = (num(k, &v)? as usize).max(1),
                _ => unreachable!(),
            }
        }
        if c.sizes.is_empty()
            || c.clients.is_empty()
            || c.clients.contains(&0)
            || c.change_clients == 0
        {
            return Err("need at least one size, and client counts of at least 1".into());
        }
        Ok(c)
    }
}
