//! Helpers for the Cloud Map integration tests: a real moto server per test, seeding with the AWS
//! SDK, a fault-injecting HTTP proxy, an ADS client that follows the served ServiceEntries, and the
//! server started in-process.
#![allow(dead_code)]

pub mod ads;
pub mod http1;
pub mod moto;
pub mod proxy;
pub mod seed;
pub mod server;

use std::sync::Once;

static INIT: Once = Once::new();

/// Dummy credentials, no instance metadata, logs to the test output. Call first in every test.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY (edition 2021: set_var is safe): every test calls this first, under a Once, and
        // all environment access in this process goes through std's lock.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_ENDPOINT_URL");
        std::env::remove_var("AWS_ENDPOINT_URL_SERVICEDISCOVERY");
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "cloudmap_mcp=info,warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Short intervals so tests run in seconds.
pub const FAST: &[&str] = &[
    "--istio-namespace",
    "istio-system",
    "--resync-interval",
    "1s",
    "--revision-poll-interval",
    "200ms",
    "--revision-poll-max-interval",
    "400ms",
    "--instances-refresh-interval",
    "1s",
    "--health-refresh-interval",
    "300ms",
];

/// `base` with `extra` (flag, value pairs) overriding or added.
pub fn args<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = base.to_vec();
    for pair in extra.chunks(2) {
        match v.iter().position(|a| *a == pair[0]) {
            Some(i) => v[i + 1] = pair[1],
            None => v.extend_from_slice(pair),
        }
    }
    v
}
