//! A Kubernetes node emulated on this machine as kubelet and the container runtime lay it out:
//! a container's cgroup under `kubepods` on the machine's own cgroup mounts, kubelet's log
//! directories (`pods/<namespace>_<pod>_<uid>/<container>/`, `containers/<pod>_<namespace>_
//! <container>-<id>.log`) in a folder of the test's, and an API server answering the list
//! and watch of this node's pods with the API's own JSON.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{Query, State},
    response::Response,
    routing::get,
    Router,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::tempdir;

/// The emulated node's name.
pub const NODE: &str = "node-1";

/// A pod's container, as the node names it.
#[derive(Clone, Debug)]
pub struct Container {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub name: String,
    /// 64 hex digits, as runtimes name containers.
    pub id: String,
}

impl Container {
    /// The `n`th container of the test, in pod `pod` of `namespace`.
    pub fn new(namespace: &str, pod: &str, name: &str, n: u8) -> Self {
        let pid = std::process::id();
        Self {
            namespace: namespace.into(),
            pod: pod.into(),
            uid: format!("{pid:08x}-0000-4000-8000-{n:012x}"),
            name: name.into(),
            id: format!("{pid:08x}{n:056x}"),
        }
    }
}

/// How the container's cgroup is laid out.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// kubelet's systemd driver, containerd: on the cgroup2 mount,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
    /// cri-containerd-<id>.scope`.
    SystemdContainerd,
    /// kubelet's cgroupfs driver, CRI-O: on a cgroup v1 hierarchy where the machine has
    /// one (else the cgroup2 mount), `kubepods/besteffort/pod<uid>/crio-<id>`.
    CgroupfsCrio,
    /// Under `kubepods`, in no shape kubelet makes.
    Odd,
}

/// The node: its cgroups and kubelet's directories, removed when dropped (after the
/// processes in them: drop it last).
pub struct Node {
    logs: PathBuf,
    /// Cgroup directories used, deepest last.
    cgroups: Vec<PathBuf>,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub fn new() -> Self {
        let logs = tempdir().join("kubelet");
        std::fs::create_dir_all(logs.join("pods")).unwrap();
        std::fs::create_dir_all(logs.join("containers")).unwrap();
        Self {
            logs,
            cgroups: Vec::new(),
        }
    }

    /// The agent's arguments for this node (its name; kubelet's directories).
    pub fn agent_args(&self) -> Vec<String> {
        let dir = |d: &str| self.logs.join(d).display().to_string();
        vec![
            "--node-name".into(),
            NODE.into(),
            "--pod-logs".into(),
            dir("pods"),
            "--container-logs".into(),
            dir("containers"),
        ]
    }

    /// Makes `c`'s cgroup (`layout`) and its kubelet directories; returns its `cgroup.procs`,
    /// for `start_in`.
    pub fn container(&mut self, c: &Container, layout: Layout) -> PathBuf {
        let pod_dir = self
            .logs
            .join("pods")
            .join(format!("{}_{}_{}", c.namespace, c.pod, c.uid))
            .join(&c.name);
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::write(pod_dir.join("0.log"), "").unwrap();
        let link = self
            .logs
            .join("containers")
            .join(format!("{}_{}_{}-{}.log", c.pod, c.namespace, c.name, c.id));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(pod_dir.join("0.log"), link).unwrap();
        let mut under = |root: PathBuf, parts: &[String]| -> PathBuf {
            let mut path = root;
            for part in parts {
                path = path.join(part);
                // Tests running at once share the upper levels: each tries to remove them
                // when it ends, and the last one out succeeds (see Drop).
                match std::fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => panic!("making cgroup {}: {e}", path.display()),
                }
                if !self.cgroups.contains(&path) {
                    self.cgroups.push(path.clone());
                }
            }
            path
        };
        let leaf = match layout {
            Layout::SystemdContainerd => {
                let uid = c.uid.replace('-', "_");
                under(
                    cgroup2_mount(),
                    &[
                        "kubepods.slice".into(),
                        "kubepods-burstable.slice".into(),
                        format!("kubepods-burstable-pod{uid}.slice"),
                        format!("cri-containerd-{}.scope", c.id),
                    ],
                )
            }
            Layout::CgroupfsCrio => under(
                cgroup_v1_pids().unwrap_or_else(cgroup2_mount),
                &[
                    "kubepods".into(),
                    "besteffort".into(),
                    format!("pod{}", c.uid),
                    format!("crio-{}", c.id),
                ],
            ),
            Layout::Odd => under(
                cgroup2_mount(),
                &["kubepods".into(), format!("odd-{}", c.id)],
            ),
        };
        leaf.join("cgroup.procs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A level another test still uses is not empty: it stays for that test to remove.
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Has `cmd` start in the cgroup whose `cgroup.procs` is `procs` (it moves itself there
/// before it runs the program).
pub fn start_in(cmd: &mut Command, procs: &Path) {
    let procs = procs.to_owned();
    // SAFETY: between fork and exec, only a write to a file, no allocation shared with the
    // parent's threads (the path was made before the fork).
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid machines such as this one).
fn cgroup2_mount() -> PathBuf {
    mounts()
        .into_iter()
        .find(|(fstype, _, _)| fstype == "cgroup2")
        .map(|(_, point, _)| point)
        .expect("a cgroup2 mount")
}

/// A cgroup v1 hierarchy (the `pids` controller's), if the machine has one.
fn cgroup_v1_pids() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(fstype, _, options)| fstype == "cgroup" && options.split(',').any(|o| o == "pids"))
        .map(|(_, point, _)| point)
}

/// (type, mount point, options) of every mount.
fn mounts() -> Vec<(String, PathBuf, String)> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(2)?.to_string(),
                PathBuf::from(f.get(1)?),
                f.get(3)?.to_string(),
            ))
        })
        .collect()
}

/// A pod as the API server writes it: its metadata (labels, annotations, controller) and
/// the container's status.
pub fn pod_json(
    c: &Container,
    labels: Value,
    annotations: Value,
    controller: (&str, &str),
) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": c.pod, "namespace": c.namespace, "uid": c.uid, "resourceVersion": "100",
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": controller.0,
                "name": controller.1, "uid": "c0ffee00-0000-4000-8000-000000000000",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": c.name, "image": "x"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": c.name, "ready": true,
            "containerID": format!("containerd://{}", c.id)}]}
    })
}

/// An API server answering `GET /api/v1/pods` (the list, and `watch=true`: the events given,
/// then nothing until it stops), on a loopback port; what it was asked is kept.
pub struct ApiServer {
    pub url: String,
    pub asked: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct ApiState {
    list: Value,
    events: Vec<Value>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    /// Lists `pods`; a watch sends `events` (`{"type": ..., "object": pod}`).
    pub fn start(pods: Vec<Value>, events: Vec<Value>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let state = ApiState {
            list: json!({"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "100"}, "items": pods}),
            events,
            asked: asked.clone(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/api/v1/pods", get(pods_route))
            .with_state(state);
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            asked,
            _runtime: runtime,
        }
    }
}

async fn pods_route(
    State(state): State<ApiState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    state.asked.lock().unwrap().push(q.join("&"));
    let watch = query.iter().any(|(k, v)| k == "watch" && v == "true");
    let body = if watch {
        let lines: Vec<Result<String, std::io::Error>> =
            state.events.iter().map(|e| Ok(format!("{e}\n"))).collect();
        let stream = futures_util::stream::iter(lines).chain(futures_util::stream::pending());
        Body::from_stream(stream)
    } else {
        Body::from(state.list.to_string())
    };
    Response::builder()
        .header("Content-Type", "application/json")
        .body(body)
        .unwrap()
}
