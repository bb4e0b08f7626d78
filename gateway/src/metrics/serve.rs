//! The metrics HTTP endpoint: `GET /metrics` on `[metrics] listen`, served by `hyper`
//! (HTTP/1.1), the text encoded by `prometheus-client` at each scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::daemon::Lifecycle;

/// OpenMetrics text, which Prometheus negotiates and reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The answer to one HTTP request.
fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut text = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => reply(StatusCode::OK, CONTENT_TYPE, text),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding failed: {e}\n")),
            }
        }
        (&Method::GET, "/") => reply(StatusCode::OK, "text/plain", "nasgw: metrics at /metrics\n".to_string()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found; metrics are at GET /metrics\n".to_string()),
    }
}

/// Binds `listen` and serves scrapes until the daemon stops.
pub async fn start(listen: SocketAddr, registry: Registry, life: &Lifecycle) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen for metrics on {listen}"))?;
    tracing::info!(%listen, "metrics endpoint listening (GET /metrics)");
    let registry = Arc::new(registry);
    let l = life.clone();
    life.tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = l.stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        crate::listener::pause_if_out_of_resources(&e).await;
                        continue;
                    }
                },
            };
            let (registry, stop) = (registry.clone(), l.stop.clone());
            l.tasks.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&registry, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics: connection ended with an error");
                    },
                }
            });
        }
    });
    Ok(())
}
