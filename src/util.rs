//! Small async helpers shared by the servers.
use tokio::sync::watch;

/// Completes when the flag turns true, or when its sender is gone.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Completes with true when the value becomes `Some`, false if the sender is gone first.
pub async fn until_some<T>(rx: &mut watch::Receiver<Option<T>>) -> bool {
    rx.wait_for(|v| v.is_some()).await.map(|_| ()).is_ok()
}
