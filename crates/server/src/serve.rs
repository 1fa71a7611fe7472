//! Running the server and shutting it down.
//!
//! Shutdown (SIGTERM/SIGINT, or the `shutdown` future resolving): report NOT_SERVING and refuse
//! new generations (`UNAVAILABLE`) while the listeners stay up, so probes see the state; let
//! in-flight generations finish for up to the grace period; abort what is left (`UNAVAILABLE`,
//! the engine frees their blocks); then stop the gRPC server (GOAWAY, connections close) and the
//! HTTP server, and return.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};

use crate::ServerError;
use crate::state::AppState;

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` resolves, then drains (see above).
pub async fn serve(
    state: Arc<AppState>,
    router: Router,
    grpc: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
    let mut grpc_task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));
    let http_task = http.map(|l| {
        let app = crate::http::router(state.clone());
        tokio::spawn(axum::serve(l, app).with_graceful_shutdown(stopped(stop_rx.clone())).into_future())
    });

    tokio::select! {
        () = shutdown => {}
        // The server ended on its own: only an error does that.
        r = &mut grpc_task => {
            return match r {
                Ok(r) => r.map_err(ServerError::from),
                Err(e) => Err(ServerError::Task(e.to_string())),
            };
        }
    }
    drain(&state).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), grpc_task).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(ServerError::Task(e.to_string())),
        Err(_) => tracing::warn!("gRPC connections did not close within 10 s; exiting anyway"),
    }
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

async fn drain(state: &AppState) {
    let grace = state.opts.shutdown_grace;
    tracing::info!(in_flight = state.in_flight(), grace_s = grace.as_secs_f64(), "shutting down: draining");
    state.begin_drain().await;
    let end = Instant::now() + grace;
    while state.in_flight() > 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.in_flight() > 0 {
        tracing::warn!(in_flight = state.in_flight(), "shutdown grace over: aborting the remaining requests");
        state.abort_all();
        let end = Instant::now() + Duration::from_secs(5);
        while state.in_flight() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        () = term => tracing::info!("SIGTERM"),
    }
}
