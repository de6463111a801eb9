//! A real moto server (`moto_server`) on a free loopback port, one per test, killed on drop.
//!
//! The binary is `$MOTO_SERVER`, else `.venv/bin/moto_server` in the crate (what `.ci/run`
//! installs), else `moto_server` on PATH. Without one, tests print a skip message and pass, unless
//! `CLOUDMAP_MCP_REQUIRE_TOOLS=1`, where they fail.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http1;

pub struct Moto {
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Where moto_server is, or why not.
pub fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("MOTO_SERVER={} does not exist", p.display())) };
    }
    // The venv scripts/test-all.sh installs comes first: a moto on PATH may be too old (5.2.1
    // lacks GetServiceAttributes).
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(p) = on_path("moto_server") {
        return Ok(p);
    }
    Err("moto_server not found: set MOTO_SERVER, put moto_server on PATH, or run \
         `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'`"
        .into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Moto {
    /// Starts moto, or returns None after printing why the test is skipped.
    pub async fn start(test: &str) -> Option<Moto> {
        let bin = match find() {
            Ok(b) => b,
            Err(why) => {
                if std::env::var("CLOUDMAP_MCP_REQUIRE_TOOLS").as_deref() == Ok("1") {
                    panic!("{test}: {why} (CLOUDMAP_MCP_REQUIRE_TOOLS=1, so this is a failure)");
                }
                eprintln!("SKIPPED {test}: {why}");
                return None;
            }
        };
        let port = free_port();
        let log = std::env::temp_dir().join(format!("cloudmap-mcp-moto-{port}.log"));
        let mut m = Moto { bin, port, child: None, log };
        m.spawn().await;
        Some(m)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("moto log file");
        let child = Command::new(&self.bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http1::request(self.addr(), "GET", "/moto-api/", &[], b"").await {
                if r.status < 500 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let out = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("moto_server exited ({status}) on port {}:\n{out}", self.port);
            }
            if tokio::time::Instant::now() > deadline {
                panic!("moto_server did not answer on port {} within 30s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        let r = http1::request(self.addr(), "POST", "/moto-api/reset", &[], b"").await.expect("moto reset");
        assert_eq!(r.status, 200, "moto reset: {}", r.text());
    }

    /// Kills the server (its state is lost, as with a real emulator restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
