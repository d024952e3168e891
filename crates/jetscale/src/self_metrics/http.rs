//! One small HTTP/1.1 listener for `/metrics`, `/health/live` and `/health/ready`, kept
//! apart from the pipeline so that other commands (a gateway, `serve`) can reuse it.

use super::registry::{self, CLASSIC_CONTENT_TYPE, CONTENT_TYPE};
use super::Counters;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for /metrics and /health on {address}: {source}. Free the port or change service.telemetry.metrics.address")]
pub struct ListenError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A running listener; it stops when dropped.
#[derive(Debug)]
pub struct Server {
    /// Where it listens (the port chosen when the address asked for port 0).
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` and serves the counters and health of `counters` until dropped.
pub async fn serve(address: SocketAddr, counters: Arc<Counters>) -> Result<Server, ListenError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| ListenError { address, source })?;
    let registry = Arc::new(registry::registry(counters.clone()));
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &registry, &counters);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!(%address, "serving /metrics, /health/live and /health/ready");
    Ok(Server { address, task })
}

fn respond(
    request: &Request<Incoming>,
    registry: &Registry,
    counters: &Counters,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => match registry::render(registry) {
            Ok(body) => {
                // Prometheus asks for OpenMetrics; curl and promtool get the classic format.
                let openmetrics = request
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let (body, content_type) = if openmetrics {
                    (body, CONTENT_TYPE)
                } else {
                    (registry::to_classic_text(&body), CLASSIC_CONTENT_TYPE)
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, value);
                }
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be rendered\n".to_owned(),
            ),
        },
        // Alive while it can answer: the process restarts itself on lasting errors.
        "/health/live" => text(StatusCode::OK, "alive\n".to_owned()),
        "/health/ready" => {
            let readiness = counters.health.readiness();
            if readiness.ready {
                text(StatusCode::OK, "ready\n".to_owned())
            } else {
                let mut body = String::from("not ready:\n");
                for reason in &readiness.reasons {
                    body.push_str("- ");
                    body.push_str(reason);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health/live or /health/ready\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
