//! What the agent serves: /metrics (OpenMetrics for clients that ask for it, as Prometheus
//! does; the classic text format otherwise) and /healthz.

mod text_format;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::runtime::Agent;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(addr: SocketAddr, agent: Arc<Agent>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    log::info!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    );
    axum::serve(listener, router(agent)).await
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { "obs-agent: see /metrics and /healthz\n" }),
        )
        .with_state(agent)
}

async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> impl IntoResponse {
    agent.refresh();
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match agent.metrics.encode() {
        Ok(body) if wants_openmetrics => {
            ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
        }
        Ok(body) => (
            [(header::CONTENT_TYPE, text_format::CONTENT_TYPE)],
            text_format::from_openmetrics(&body),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}
