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

use crate::metrics::Metrics;
use trace_store::{parse_trace_id, render_tree, TraceJson, TraceStore};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    traces: Arc<TraceStore>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    log::info!("serving metrics on http://{local}/metrics and traces on http://{local}/traces");
    axum::serve(listener, router(metrics).merge(trace_router(traces))).await
}

/// `/metrics` encodes the registry as it is: the agent keeps it up to date on its own timer,
/// so a scrape does no work of the agent's and reads no process.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { "obs-agent: see /metrics, /traces and /healthz\n" }),
        )
        .with_state(metrics)
}

async fn metrics_text(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match metrics.encode() {
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

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use tower::ServiceExt;

    use super::*;
    use crate::spans::trace::fixtures;

    fn store() -> Arc<TraceStore> {
        let store = Arc::new(TraceStore::new(100));
        for (trace, ms) in [(1u8, 5u64), (2, 50)] {
            let start = u64::from(trace) * 1000;
            store.insert(fixtures::span(trace, trace, start, start + ms));
        }
        store
    }

    async fn get(uri: &str) -> (StatusCode, String) {
        let response = trace_router(store())
            .oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn lists_newest_first_with_filters() {
        let (status, body) = get("/traces").await;
        assert_eq!(status, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["trace_id"], "02020202020202020202020202020202");
        assert_eq!(list.as_array().unwrap().len(), 2);
        let (_, body) = get("/traces?min_duration_ms=10").await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (_, body) = get("/traces?limit=1").await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_trace_as_json_or_tree() {
        let id = "01010101010101010101010101010101";
        let (status, body) = get(&format!("/traces/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        let trace: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(trace["spans"][0]["span_id"], "0101010101010101");
        let tree = format!("trace {id}: 1 span, 5.000 ms\nfront GET / 5.000 ms OK\n");
        assert_eq!(
            get(&format!("/traces/{id}/tree")).await,
            (StatusCode::OK, tree.clone())
        );
        assert_eq!(
            get(&format!("/traces/{}?format=text", id.to_uppercase())).await,
            (StatusCode::OK, tree)
        );
    }

    #[tokio::test]
    async fn unknown_and_malformed_ids() {
        let (status, body) = get("/traces/0303030303030303030303030303030f").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.starts_with("no trace 0303030303030303030303030303030f in memory"));
        let (status, body) = get("/traces/xyz/tree").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "\"xyz\" is not a trace id: expected 32 hex digits\n");
    }
}
