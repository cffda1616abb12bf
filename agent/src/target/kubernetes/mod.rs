//! Which pod, container and owner a watched process belongs to, on a Kubernetes node, and
//! the service name OpenTelemetry's precedence gives it. Learned without the API server from
//! what every kubelet node has: the process's cgroup path (`cgroup`: the pod's uid and the
//! container's id) and kubelet's log directories (`kubelet`: the pod's namespace and name, the
//! container's name); the owner from the pod's name (`owner`). When the API server is
//! reachable (`api`: list and watch of this node's pods), its labels, annotations and real
//! owners are used too.
//!
//! A process outside Kubernetes has no identity (not an error). One in a pod that cannot be
//! named (a cgroup layout this agent does not know, a pod in neither kubelet's directories
//! nor the API) gets no Kubernetes labels and a counted reason ([`IdentityError`]).

pub mod api;
pub mod cgroup;
pub mod kubelet;
pub mod owner;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use self::{
    api::ApiPods,
    cgroup::NotInPod,
    kubelet::{ContainerLink, PodDir},
    owner::Owners,
};

/// The annotation and label OpenTelemetry reads a pod's service name from, in that order.
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// A watched process's place in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
    pub node: Option<String>,
    pub owners: Owners,
    /// The pod's `resource.opentelemetry.io/service.name` annotation (API only).
    pub service_annotation: Option<String>,
    /// The pod's `app.kubernetes.io/name` label (API only).
    pub app_name: Option<String>,
}

impl PodIdentity {
    /// What it says of itself, those known: OpenTelemetry's resource attribute name
    /// (`k8s.pod.name`; `None` where OpenTelemetry has none), the Prometheus label name
    /// (`k8s_pod_name`), the value.
    pub fn fields(&self) -> impl Iterator<Item = (Option<&'static str>, &'static str, &str)> {
        let o = &self.owners;
        [
            (
                Some("k8s.namespace.name"),
                "k8s_namespace_name",
                Some(self.namespace.as_str()),
            ),
            (
                Some("k8s.pod.name"),
                "k8s_pod_name",
                Some(self.pod.as_str()),
            ),
            (Some("k8s.pod.uid"), "k8s_pod_uid", Some(self.uid.as_str())),
            (
                Some("k8s.container.name"),
                "k8s_container_name",
                self.container.as_deref(),
            ),
            (Some("k8s.node.name"), "k8s_node_name", self.node.as_deref()),
            (
                Some("k8s.deployment.name"),
                "k8s_deployment_name",
                o.deployment.as_deref(),
            ),
            (
                Some("k8s.replicaset.name"),
                "k8s_replicaset_name",
                o.replicaset.as_deref(),
            ),
            (
                Some("k8s.daemonset.name"),
                "k8s_daemonset_name",
                o.daemonset.as_deref(),
            ),
            (
                Some("k8s.statefulset.name"),
                "k8s_statefulset_name",
                o.statefulset.as_deref(),
            ),
            (Some("k8s.job.name"), "k8s_job_name", o.job.as_deref()),
            (
                Some("k8s.cronjob.name"),
                "k8s_cronjob_name",
                o.cronjob.as_deref(),
            ),
            (None, "k8s_owner_name", o.top()),
        ]
        .into_iter()
        .filter_map(|(attribute, label, value)| {
            Some((attribute, label, value.filter(|v| !v.is_empty())?))
        })
    }

    /// The service name OpenTelemetry's precedence gives a pod's process that did not set
    /// `OTEL_SERVICE_NAME`: the annotation, the `app.kubernetes.io/name` label, the owner
    /// (Deployment, StatefulSet, ...), the pod.
    pub fn service_name(&self) -> &str {
        self.service_annotation
            .as_deref()
            .or(self.app_name.as_deref())
            .or(self.owners.top())
            .unwrap_or(&self.pod)
    }
}

/// Why a process in a pod got no identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("its cgroup path is under kubepods but not in a layout this agent knows")]
    UnrecognisedCgroup,
    #[error("its pod is in neither kubelet's log directories nor the API server's list")]
    UnknownPod,
}

/// Where the agent looks.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// This node's name (`--node-name`, `NODE_NAME`).
    pub node: Option<String>,
    /// kubelet's `/var/log/pods` and `/var/log/containers`.
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
}

/// kubelet's directories are read again when a pod is not in them, at most this often.
const REREAD_AFTER: Duration = Duration::from_millis(500);

/// Names processes' pods.
pub struct Kubernetes {
    config: KubernetesConfig,
    /// This node's pods as the API server lists them, when the agent watches it.
    api: Option<Arc<ApiPods>>,
    dirs: Mutex<KubeletDirs>,
}

#[derive(Default)]
struct KubeletDirs {
    pods: HashMap<String, PodDir>,
    containers: HashMap<String, ContainerLink>,
    read_at: Option<Instant>,
}

impl Kubernetes {
    pub fn new(config: KubernetesConfig, api: Option<Arc<ApiPods>>) -> Self {
        Self {
            config,
            api,
            dirs: Mutex::new(KubeletDirs::default()),
        }
    }

    /// The identity of process `pid`: `None` outside Kubernetes.
    pub fn identify(&self, pid: u32) -> Result<Option<PodIdentity>, IdentityError> {
        let Ok(content) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            // Gone, or no cgroups: nothing to say.
            return Ok(None);
        };
        self.identify_cgroup(&content)
    }

    /// The identity of a process whose `/proc/PID/cgroup` reads `content`.
    pub fn identify_cgroup(&self, content: &str) -> Result<Option<PodIdentity>, IdentityError> {
        let found = match cgroup::parse(content) {
            Ok(found) => found,
            Err(NotInPod::Outside) => return Ok(None),
            Err(NotInPod::Unrecognised) => return Err(IdentityError::UnrecognisedCgroup),
        };
        let from_api = self.api.as_ref().and_then(|api| api.get(&found.pod_uid));
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let stale = dirs.read_at.is_none_or(|t| t.elapsed() >= REREAD_AFTER);
        let missing = !dirs.pods.contains_key(&found.pod_uid)
            || found
                .container_id
                .as_ref()
                .is_some_and(|id| !dirs.containers.contains_key(id));
        if missing && stale {
            dirs.pods = kubelet::pod_dirs(&self.config.pod_logs);
            dirs.containers = kubelet::container_links(&self.config.container_logs);
            dirs.read_at = Some(Instant::now());
        }
        let dir = dirs.pods.get(&found.pod_uid);
        let (namespace, pod) = match (&from_api, dir) {
            (Some(meta), _) => (meta.namespace.clone(), meta.name.clone()),
            (None, Some(dir)) => (dir.namespace.clone(), dir.name.clone()),
            (None, None) => return Err(IdentityError::UnknownPod),
        };
        let container = found.container_id.as_ref().and_then(|id| {
            from_api
                .as_ref()
                .and_then(|meta| meta.containers.get(id).cloned())
                .or_else(|| dirs.containers.get(id).map(|l| l.container.clone()))
        });
        // A pod of one container: that one.
        let container = container.or_else(|| match dir.map(|d| d.containers.as_slice()) {
            Some([only]) if found.container_id.is_some() => Some(only.clone()),
            _ => None,
        });
        let owners = match &from_api {
            Some(meta) => meta.owners.clone(),
            None => Owners::from_pod_name(&pod),
        };
        Ok(Some(PodIdentity {
            namespace,
            pod,
            uid: found.pod_uid,
            container,
            node: self.config.node.clone(),
            owners,
            service_annotation: from_api.as_ref().and_then(|m| m.service_annotation.clone()),
            app_name: from_api.as_ref().and_then(|m| m.app_name.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5b0c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn node(name: &str) -> (PathBuf, Kubernetes) {
        let root = std::env::temp_dir().join(format!("obs-k8s-{name}-{}", std::process::id()));
        let pods = root.join("pods");
        let pod = pods.join(format!("shop_checkout-7d9f8b6c5d-x2k4z_{UID}"));
        std::fs::create_dir_all(pod.join("server")).unwrap();
        std::fs::create_dir_all(root.join("containers")).unwrap();
        let k = Kubernetes::new(
            KubernetesConfig {
                node: Some("node-1".into()),
                pod_logs: pods,
                container_logs: root.join("containers"),
            },
            None,
        );
        (root, k)
    }

    #[test]
    fn a_process_in_a_pod_is_named_from_its_cgroup_and_kubelets_directories() {
        let (root, k) = node("named");
        let u = UID.replace('-', "_");
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
        );
        let id = k.identify_cgroup(&cgroup).unwrap().unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.pod.as_str(), id.uid.as_str()),
            ("shop", "checkout-7d9f8b6c5d-x2k4z", UID)
        );
        assert_eq!(id.container.as_deref(), Some("server"));
        assert_eq!(id.node.as_deref(), Some("node-1"));
        assert_eq!(id.owners.deployment.as_deref(), Some("checkout"));
        assert_eq!(id.service_name(), "checkout");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn outside_kubernetes_and_odd_paths() {
        let (root, k) = node("odd");
        assert_eq!(
            k.identify_cgroup("0::/system.slice/nginx.service\n"),
            Ok(None)
        );
        assert_eq!(
            k.identify_cgroup("0::/kubepods/burstable/podzzz/abc\n"),
            Err(IdentityError::UnrecognisedCgroup)
        );
        let other = "0::/kubepods/pod11111111-2222-3333-4444-555555555555/x\n";
        assert_eq!(k.identify_cgroup(other), Err(IdentityError::UnknownPod));
        // The agent's own process, wherever this test runs: no panic, an answer.
        let _ = k.identify(std::process::id());
        std::fs::remove_dir_all(root).unwrap();
    }
}
