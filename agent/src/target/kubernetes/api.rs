//! This node's pods as the API server knows them: listed once, then watched
//! (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`, then `&watch=true` from the
//! list's resource version, events one JSON object a line; relisted when the watch says the
//! version is gone). Only what names a process is kept: namespace and name, the
//! `app.kubernetes.io/name` label, the `resource.opentelemetry.io/service.name` annotation,
//! the controller (and through the `pod-template-hash` label a ReplicaSet's Deployment), and
//! which container id is which container.
//!
//! In a pod with a service account the API server is `KUBERNETES_SERVICE_HOST`, with the
//! account's token and CA; `--kubernetes-api URL` names another (e.g. `kubectl proxy`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;

use super::{owner::Owners, APP_NAME_LABEL, SERVICE_NAME_ANNOTATION};

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A watch line longer than this is not a pod: the stream is dropped and listed again.
const MAX_LINE: usize = 16 << 20;
/// Seconds a watch lasts before the server ends it (then it is resumed).
const WATCH_SECONDS: u32 = 300;
/// A watch that ends sooner than this is an error (listed again after a back-off).
const MIN_WATCH: Duration = Duration::from_secs(1);

/// What the agent keeps of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub owners: Owners,
    pub service_annotation: Option<String>,
    pub app_name: Option<String>,
    /// Container id (as the runtime names it, without `containerd://`) -> container name.
    pub containers: HashMap<String, String>,
}

/// This node's pods, by uid, as last listed and watched.
#[derive(Debug, Default)]
pub struct ApiPods {
    pods: RwLock<HashMap<String, Arc<PodMeta>>>,
    synced: AtomicBool,
}

impl ApiPods {
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// Whether a list has been read since the agent started.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    fn replace(&self, pods: HashMap<String, Arc<PodMeta>>) {
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = pods;
        self.synced.store(true, Ordering::Relaxed);
    }

    fn apply(&self, event: &str, uid: String, meta: PodMeta) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        match event {
            "DELETED" => {
                pods.remove(&uid);
            }
            _ => {
                pods.insert(uid, Arc::new(meta));
            }
        }
    }
}

/// Where the API server is and how to talk to it.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `https://host:port` or `http://...`, no trailing slash.
    pub base: String,
    pub token: Option<String>,
    /// A PEM CA to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl ApiConfig {
    /// In a pod with a service account token: the cluster's API server.
    pub fn in_cluster() -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/token")).ok()?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(Self {
            base: format!("https://{host}:{port}"),
            token: Some(token.trim().to_owned()),
            ca_pem: std::fs::read(format!("{SERVICE_ACCOUNT}/ca.crt")).ok(),
        })
    }

    /// An API server at `url` (`kubectl proxy`'s, say), without credentials.
    pub fn at(url: &str) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            token: None,
            ca_pem: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API server's CA certificate: {0}")]
    Ca(#[from] crate::https::CaError),
    #[error("request to the API server: {0}")]
    Request(String),
    #[error("the API server answered {status} to {path}")]
    Status { status: u16, path: String },
    #[error("reading the API server's answer: {0}")]
    Body(String),
    #[error("the API server's answer is not a pod list: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a watch line of over {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the watch's resource version is gone (410)")]
    Gone,
    #[error("the API server ended the watch at once")]
    WatchEnded,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Lists and watches `node`'s pods into `pods` forever, listing again after any error
/// (reported to `on_error`, waiting 1 s, then longer, up to 30 s, between attempts).
pub async fn watch_pods(
    config: ApiConfig,
    node: String,
    pods: Arc<ApiPods>,
    on_error: impl Fn(&ApiError),
) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => return on_error(&e),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        match list_and_watch(&client, &config, &node, &pods).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                on_error(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One list, then watches from its version until the server says it is gone or something
/// fails.
async fn list_and_watch(
    client: &HttpClient,
    config: &ApiConfig,
    node: &str,
    pods: &ApiPods,
) -> Result<(), ApiError> {
    let selector = format!("fieldSelector=spec.nodeName%3D{}", encode(node));
    let body = get(client, config, &format!("/api/v1/pods?{selector}")).await?;
    let body = body
        .collect()
        .await
        .map_err(|e| ApiError::Body(e.to_string()))?
        .to_bytes();
    let list: PodList = serde_json::from_slice(&body)?;
    let mut version = list.metadata.resource_version.unwrap_or_default();
    pods.replace(list.items.iter().filter_map(Pod::meta).collect());
    log::info!("Kubernetes API: {} pods on node {node}", list.items.len());
    loop {
        let path = format!(
            "/api/v1/pods?{selector}&watch=true&allowWatchBookmarks=true\
             &timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            encode(&version)
        );
        let started = std::time::Instant::now();
        let mut body = get(client, config, &path).await?;
        let mut line = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::Body(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for chunk in data.split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(chunk);
                if line.len() > MAX_LINE {
                    return Err(ApiError::LineTooLong);
                }
                if line.ends_with(b"\n") {
                    if let Some(v) = apply_event(pods, &line)? {
                        version = v;
                    }
                    line.clear();
                }
            }
        }
        // A server ends a watch after `timeoutSeconds`; one that ends it at once would have
        // the agent ask again and again: list again, after the back-off.
        if started.elapsed() < MIN_WATCH {
            return Err(ApiError::WatchEnded);
        }
    }
}

/// One watch event: the pod's new state, or a bookmark; its resource version.
fn apply_event(pods: &ApiPods, line: &[u8]) -> Result<Option<String>, ApiError> {
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    let event: WatchEvent = serde_json::from_slice(line)?;
    match event.kind.as_str() {
        "ERROR" => {
            // A Status: 410 Gone means list again; any other error too.
            let code = event.object.get("code").and_then(|c| c.as_u64());
            Err(if code == Some(410) {
                ApiError::Gone
            } else {
                ApiError::Status {
                    status: code.unwrap_or(0) as u16,
                    path: "watch".into(),
                }
            })
        }
        kind => {
            let pod: Pod = serde_json::from_value(event.object)?;
            let version = pod.metadata.resource_version.clone();
            if kind != "BOOKMARK" {
                if let Some((uid, meta)) = pod.meta() {
                    pods.apply(
                        kind,
                        uid,
                        Arc::try_unwrap(meta).unwrap_or_else(|m| (*m).clone()),
                    );
                }
            }
            Ok(version)
        }
    }
}

async fn get(
    client: &HttpClient,
    config: &ApiConfig,
    path: &str,
) -> Result<hyper::body::Incoming, ApiError> {
    let mut request =
        hyper::Request::get(format!("{}{path}", config.base)).header("Accept", "application/json");
    if let Some(token) = &config.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Request(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| ApiError::Request(crate::probes::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(ApiError::Status {
            status: response.status().as_u16(),
            path: path.split('?').next().unwrap_or(path).to_owned(),
        });
    }
    Ok(response.into_body())
}

fn client(config: &ApiConfig) -> Result<HttpClient, ApiError> {
    let connector = crate::https::connector(config.ca_pem.as_deref())?;
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Percent-encodes what a query value may not hold as is.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// The API's JSON, as far as it is read (unknown fields are ignored).

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Default, Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default, rename = "ownerReferences")]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Default, Deserialize)]
struct PodStatus {
    #[serde(default, rename = "containerStatuses")]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default, rename = "initContainerStatuses")]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
    #[serde(default, rename = "containerID")]
    container_id: String,
}

impl Pod {
    /// The pod's uid and what the agent keeps of it (none without a uid).
    fn meta(&self) -> Option<(String, Arc<PodMeta>)> {
        let m = &self.metadata;
        if m.uid.is_empty() {
            return None;
        }
        let owners = m
            .owner_references
            .iter()
            .find(|o| o.controller)
            .map(|o| {
                Owners::from_controller(
                    &o.kind,
                    &o.name,
                    m.labels.get("pod-template-hash").map(String::as_str),
                )
            })
            .unwrap_or_default();
        let containers = self
            .status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .filter_map(|c| {
                let (_, id) = c.container_id.split_once("://")?;
                Some((id.to_owned(), c.name.clone()))
            })
            .collect();
        let non_empty = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
        Some((
            m.uid.clone(),
            Arc::new(PodMeta {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                owners,
                service_annotation: non_empty(m.annotations.get(SERVICE_NAME_ANNOTATION)),
                app_name: non_empty(m.labels.get(APP_NAME_LABEL)),
                containers,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server writes it (trimmed of what the agent ignores).
    pub fn pod_json(uid: &str, name: &str, version: u32) -> serde_json::Value {
        serde_json::json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": name, "namespace": "shop", "uid": uid,
                "resourceVersion": version.to_string(),
                "labels": {"app.kubernetes.io/name": "checkout-svc", "pod-template-hash": "7d9f8b6c5d"},
                "annotations": {"resource.opentelemetry.io/service.name": "checkout-api"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-7d9f8b6c5d", "uid": "x", "controller": true}]
            },
            "spec": {"nodeName": "node-1"},
            "status": {"containerStatuses": [{"name": "server",
                "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}]}
        })
    }

    #[test]
    fn pods_of_a_list_and_watch_events() {
        let pods = ApiPods::default();
        let list: PodList = serde_json::from_value(serde_json::json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
            "items": [pod_json("u1", "checkout-7d9f8b6c5d-x2k4z", 9)]
        }))
        .unwrap();
        pods.replace(list.items.iter().filter_map(Pod::meta).collect());
        let meta = pods.get("u1").unwrap();
        assert_eq!(meta.owners.deployment.as_deref(), Some("checkout"));
        assert_eq!(meta.service_annotation.as_deref(), Some("checkout-api"));
        assert_eq!(meta.app_name.as_deref(), Some("checkout-svc"));
        assert_eq!(
            meta.containers.values().next().map(String::as_str),
            Some("server")
        );
        let event = |kind: &str, pod: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({"type": kind, "object": pod})).unwrap()
        };
        let added = event("ADDED", pod_json("u2", "other", 11));
        assert_eq!(apply_event(&pods, &added).unwrap(), Some("11".into()));
        assert!(pods.get("u2").is_some());
        let deleted = event("DELETED", pod_json("u2", "other", 12));
        assert_eq!(apply_event(&pods, &deleted).unwrap(), Some("12".into()));
        assert!(pods.get("u2").is_none());
        let bookmark = event(
            "BOOKMARK",
            serde_json::json!({"kind": "Pod", "metadata": {"resourceVersion": "15"}}),
        );
        assert_eq!(apply_event(&pods, &bookmark).unwrap(), Some("15".into()));
        let gone = event("ERROR", serde_json::json!({"kind": "Status", "code": 410}));
        assert!(matches!(apply_event(&pods, &gone), Err(ApiError::Gone)));
        assert!(apply_event(&pods, b"{not json").is_err());
        assert_eq!(apply_event(&pods, b"\n").unwrap(), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("node-1.example"), "node-1.example");
        assert_eq!(encode("a=b&c"), "a%3Db%26c");
    }
}
