//! What the agent serves: /metrics (OpenMetrics for clients that ask for it, as Prometheus
//! does; the classic text format otherwise), /healthz, and the recent traces (/traces as
//! JSON, one trace as JSON or as a text tree); and where spans go (`traces`: OTLP and the
//! built-in store).

pub mod otlp;
mod text_format;
pub mod trace_store;
pub mod traces;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;

use crate::runtime::Agent;
use trace_store::{parse_trace_id, render_tree, TraceJson, TraceStore};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(
    addr: SocketAddr,
    agent: Arc<Agent>,
    traces: Arc<TraceStore>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    log::info!("serving metrics on http://{local}/metrics and traces on http://{local}/traces");
    axum::serve(listener, router(agent).merge(trace_router(traces))).await
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { "obs-agent: see /metrics, /traces and /healthz\n" }),
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

/// Most traces `/traces` lists, whatever `limit` asks.
pub const MAX_TRACES_LISTED: usize = 1000;
const DEFAULT_TRACES_LISTED: usize = 100;

/// `GET /traces[?limit=N][&min_duration_ms=N]`, `GET /traces/{trace_id}[?format=text]` and
/// `GET /traces/{trace_id}/tree`.
pub fn trace_router(store: Arc<TraceStore>) -> Router {
    Router::new()
        .route("/traces", get(list_traces))
        .route("/traces/{trace_id}", get(one_trace))
        .route("/traces/{trace_id}/tree", get(trace_tree))
        .with_state(store)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    min_duration_ms: Option<f64>,
}

async fn list_traces(
    State(store): State<Arc<TraceStore>>,
    Query(q): Query<ListQuery>,
) -> impl IntoResponse {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_TRACES_LISTED)
        .min(MAX_TRACES_LISTED);
    let min_nanos = (q.min_duration_ms.unwrap_or(0.0).max(0.0) * 1e6) as u64;
    Json(store.summaries(limit, min_nanos))
}

#[derive(Debug, Deserialize)]
struct TraceQuery {
    format: Option<String>,
}

async fn one_trace(
    State(store): State<Arc<TraceStore>>,
    Path(id): Path<String>,
    Query(q): Query<TraceQuery>,
) -> Response {
    match q.format.as_deref() {
        None | Some("json") => with_trace(&store, &id, |t, spans| {
            Json(TraceJson::new(t, spans)).into_response()
        }),
        Some("text") => with_trace(&store, &id, text_tree),
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("format={other} is not known: use json or text\n"),
        )
            .into_response(),
    }
}

async fn trace_tree(State(store): State<Arc<TraceStore>>, Path(id): Path<String>) -> Response {
    with_trace(&store, &id, text_tree)
}

fn text_tree(id: &[u8; 16], spans: &[crate::spans::trace::Span]) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        render_tree(id, spans),
    )
        .into_response()
}

fn with_trace(
    store: &TraceStore,
    id: &str,
    render: impl FnOnce(&[u8; 16], &[crate::spans::trace::Span]) -> Response,
) -> Response {
    let Some(trace_id) = parse_trace_id(id) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a trace id: expected 32 hex digits\n"),
        )
            .into_response();
    };
    match store.trace(&trace_id) {
        Some(spans) => render(&trace_id, &spans),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no trace {} in memory: it was never seen, or was evicted (the agent keeps the \
                 most recent spans only; see /traces)\n",
                id.to_ascii_lowercase()
            ),
        )
            .into_response(),
    }
}
