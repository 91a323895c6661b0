//! The shutdown signal every long-running task follows: a `watch` channel of
//! `bool` that `server` turns `true` once (on SIGTERM/SIGINT, or when the gRPC
//! server fails).

use tokio::sync::watch;

/// Resolves once shutdown has been requested (or nobody can request it any more).
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
