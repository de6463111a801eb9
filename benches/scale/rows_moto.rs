//! Row group `moto`: the poller rows ([`super::rows_poller`]) against moto_server, seeded through
//! the AWS SDK with the synthetic registry (HTTP namespaces of 100 services). moto lists every
//! service on each ListServices call and scans them on each DiscoverInstances, so it serves only
//! small registries in reasonable time (`--moto-max-services`).
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery::Client;
use futures::StreamExt;

use super::realpath;
use super::rows_poller::{self, Backend};
use super::{synthetic_model, Cell, Config, Size};

pub const P: &str = "moto";

pub fn labels(cfg: &Config) -> Vec<String> {
    rows_poller::labels(P, cfg)
}

/// moto_server: $MOTO_SERVER, else the crate's `.venv/bin/moto_server`, else `moto_server` on PATH.
pub fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("MOTO_SERVER={} does not exist", p.display()))
        };
    }
    // The venv first: a moto on PATH may be too old (5.2.1 lacks GetServiceAttributes).
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }) {
        return Ok(p);
    }
    Err("moto_server not found (set MOTO_SERVER, or run scripts/test-all.sh, which installs it into .venv)".into())
}

/// A seeded service: its id, its first instance's id and that instance's attributes.
type Seeded = (String, String, Vec<(String, String)>);

struct Moto {
    child: Child,
    port: u16,
    client: Client,
    /// Per service index: (service id, first instance id, its attributes).
    services: Vec<Seeded>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend for Moto {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    async fn set_ip(&mut self, index: usize, ip: &str) {
        let (sid, iid, attrs) = &self.services[index];
        // moto appends a second instance when an id is registered again (Cloud Map replaces it):
        // deregister first, so the service holds one instance of that id, as in Cloud Map.
        self.client
            .deregister_instance()
            .service_id(sid)
            .instance_id(iid)
            .send()
            .await
            .expect("moto DeregisterInstance");
        let mut req = self
            .client
            .register_instance()
            .service_id(sid)
            .instance_id(iid);
        for (k, v) in attrs {
            req = req.attributes(k, if k == "AWS_INSTANCE_IPV4" { ip } else { v });
        }
        req.send().await.expect("moto RegisterInstance");
    }
}

async fn start(bin: &PathBuf, size: Size) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(aws_sdk_servicediscovery::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let client = Client::new(&sdk);
    let mut moto = Moto {
        child,
        port,
        client: client.clone(),
        services: Vec::new(),
    };
    let snap = synthetic_model(size);
    for ns in &snap.namespaces {
        client
            .create_http_namespace()
            .name(&ns.http_name)
            .send()
            .await
            .expect("moto CreateHttpNamespace");
    }
    let ns_ids: std::collections::HashMap<String, String> = {
        let mut m = std::collections::HashMap::new();
        let mut token = None;
        loop {
            let out = client
                .list_namespaces()
                .set_next_token(token)
                .send()
                .await
                .expect("moto ListNamespaces");
            for n in out.namespaces() {
                m.insert(
                    n.name().unwrap_or_default().to_string(),
                    n.id().unwrap_or_default().to_string(),
                );
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        m
    };
    let jobs: Vec<_> = snap
        .namespaces
        .iter()
        .flat_map(|ns| {
            ns.services
                .iter()
                .map(move |s| (ns.http_name.clone(), s.clone()))
        })
        .collect();
    let seeded: Vec<Seeded> = futures::stream::iter(jobs)
        .map(|(ns, s)| {
            let client = client.clone();
            let ns_id = ns_ids[&ns].clone();
            async move {
                let out = client
                    .create_service()
                    .name(&s.name)
                    .namespace_id(ns_id)
                    .send()
                    .await
                    .expect("moto CreateService");
                let sid = out.service().and_then(|x| x.id()).unwrap().to_string();
                for i in s.instances.iter() {
                    let mut req = client
                        .register_instance()
                        .service_id(&sid)
                        .instance_id(&i.id);
                    for (k, v) in &i.attributes {
                        req = req.attributes(k, v);
                    }
                    req.send().await.expect("moto RegisterInstance");
                }
                let first = &s.instances[0];
                (
                    sid,
                    first.id.clone(),
                    first
                        .attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            }
        })
        .buffered(8)
        .collect()
        .await;
    moto.services = seeded;
    moto
}

/// Group `moto` (skipped with a note when moto_server is not found).
pub fn rows(cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let Some(bin) = realpath::tool_or_skip(find(), "moto", t, progress) else {
        return;
    };
    let t0 = Instant::now();
    let mut moto = rt.block_on(start(&bin, size));
    progress(&format!(
        "  moto: seeded {} services × {} endpoints in {:.1} s",
        size.services,
        size.endpoints,
        t0.elapsed().as_secs_f64()
    ));
    let extra: Vec<&str> = cfg.poller_args.iter().map(String::as_str).collect();
    t.note(format!(
        "moto: serve runs with the default Cloud Map flags{}; moto rows at sizes up to {} services (--moto-max-services)",
        if extra.is_empty() { String::new() } else { format!(" but {}", extra.join(" ")) },
        cfg.moto_max_services
    ));
    rows_poller::poller_rows(P, cfg, size, col, rt, &mut moto, &extra, t, progress);
}
