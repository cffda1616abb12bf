//! An OTLP trace receiver in the test process, for any test of what is exported: gRPC (tonic)
//! or HTTP/protobuf (axum), either over TLS, keeping every export request it gets. Also the
//! readers of those requests (their spans, their attributes as the agent's own values).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    http::{header, HeaderMap},
    routing::post,
    Router,
};
use obs_agent::{export::otlp::Protocol, spans::trace::Value};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value, AnyValue, KeyValue},
    trace::v1::Span,
};
use prost::Message;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::sleep};

/// Every export request a receiver got, in order; shared so that a receiver started again on
/// the same port (a collector coming back) adds to what its predecessor kept.
pub type Requests = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP receiver in this process, keeping every request it gets.
pub struct Receiver {
    requests: Requests,
    /// Values of the `x-obs-test` header (HTTP receiver).
    test_headers: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Keeps requests, answering each after `delay` (a slow collector).
#[derive(Clone)]
struct Collect {
    requests: Requests,
    delay: Duration,
}

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        sleep(self.delay).await;
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// OTLP/gRPC on 127.0.0.1:`port`.
    pub async fn grpc(port: u16) -> Self {
        Self::grpc_into(port, Requests::default()).await
    }

    /// OTLP/gRPC, adding to `requests` (those of an earlier receiver).
    pub async fn grpc_into(port: u16, requests: Requests) -> Self {
        Self::grpc_with(port, requests, Duration::ZERO).await
    }

    /// OTLP/gRPC answering each request after `delay`.
    pub async fn grpc_with(port: u16, requests: Requests, delay: Duration) -> Self {
        Self::grpc_server(port, requests, delay, None).await
    }

    async fn grpc_server(
        port: u16,
        requests: Requests,
        delay: Duration,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let listener = bind(port).await;
        let (stop, stopped) = oneshot::channel::<()>();
        // Collectors forward gzip-compressed (rotel does).
        let service = TraceServiceServer::new(Collect {
            requests: requests.clone(),
            delay,
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        let task = tokio::spawn(async move {
            server
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            requests,
            test_headers: Arc::default(),
            stop: Some(stop),
            task,
        }
    }

    /// OTLP/HTTP (protobuf) on 127.0.0.1:`port`, path `/v1/traces`.
    pub async fn http(port: u16) -> Self {
        let listener = bind(port).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let (app, requests, test_headers) = http_app();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            requests,
            test_headers,
            stop: Some(stop),
            task,
        }
    }

    /// A receiver serving over TLS with `cert` (PEM, for 127.0.0.1) and its `key`.
    pub async fn tls(protocol: Protocol, port: u16, cert: &str, key: &str) -> Self {
        match protocol {
            Protocol::Grpc => {
                let tls = tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key));
                Self::grpc_server(port, Requests::default(), Duration::ZERO, Some(tls)).await
            }
            Protocol::HttpProtobuf => Self::https(port, cert, key).await,
        }
    }

    async fn https(port: u16, cert: &str, key: &str) -> Self {
        use tokio_rustls::rustls::{
            self,
            pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        };
        let listener = bind(port).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let (app, requests, test_headers) = http_app();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        // axum::serve takes no TLS: accept, handshake and serve each connection here.
        let task = tokio::spawn(async move {
            let mut stopped = std::pin::pin!(stopped);
            loop {
                let (tcp, _) = tokio::select! {
                    conn = listener.accept() => conn.unwrap(),
                    _ = &mut stopped => return,
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
                });
            }
        });
        Self {
            requests,
            test_headers,
            stop: Some(stop),
            task,
        }
    }

    pub fn span_count(&self) -> usize {
        span_count(&self.requests.lock().unwrap())
    }

    /// Waits until `n` spans have arrived; panics after `timeout`.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.span_count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver got {} spans of {n} in {timeout:?}",
                self.span_count()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `x-obs-test` header of every HTTP request that had one.
    pub fn test_headers(&self) -> Vec<String> {
        self.test_headers.lock().unwrap().clone()
    }

    /// Stops serving; returns every request kept.
    pub async fn stop(mut self) -> Requests {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A connection the exporter keeps open would hold a graceful shutdown: end it.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.requests
    }
}

async fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port)).await.unwrap()
}

/// The HTTP receiver's routes: `/v1/traces` keeps each request and its `x-obs-test` header.
fn http_app() -> (Router, Requests, Arc<Mutex<Vec<String>>>) {
    let requests = Requests::default();
    let test_headers: Arc<Mutex<Vec<String>>> = Arc::default();
    let (kept, kept_headers) = (requests.clone(), test_headers.clone());
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).unwrap();
            kept.lock().unwrap().push(request);
            if let Some(v) = headers.get("x-obs-test") {
                kept_headers
                    .lock()
                    .unwrap()
                    .push(v.to_str().unwrap().to_owned());
            }
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }),
    );
    (app, requests, test_headers)
}

/// Every span of these requests, in the order received.
pub fn spans(requests: &[ExportTraceServiceRequest]) -> impl Iterator<Item = &Span> {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
}

pub fn span_count(requests: &[ExportTraceServiceRequest]) -> usize {
    spans(requests).count()
}

/// OTLP attributes as the agent's own values (strings and integers: all it exports).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value).unwrap()))
        .collect()
}

fn value(v: &Option<AnyValue>) -> Option<Value> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(Value::Str(s.clone())),
        any_value::Value::IntValue(i) => Some(Value::Int(*i)),
        other => panic!("unexpected attribute value {other:?}"),
    }
}
