//! The names kubelet gives a node's pods and containers, from the directories it keeps for
//! their logs (no API server needed): `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`,
//! and `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` (links into
//! the former). Only the names are read, never the logs.

use std::{collections::HashMap, path::Path};

/// A pod as its log directory names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDir {
    pub namespace: String,
    pub name: String,
    /// Its containers' names (one folder each).
    pub containers: Vec<String>,
}

/// A container as its log link names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The pods of `/var/log/pods`, by uid.
pub fn pod_dirs(dir: &Path) -> HashMap<String, PodDir> {
    let mut pods = HashMap::new();
    for entry in read_names(dir) {
        let Some((namespace, name, uid)) = parse_pod_dir(&entry) else {
            continue;
        };
        let mut containers = read_names(&dir.join(&entry));
        containers.sort();
        pods.insert(
            uid.to_owned(),
            PodDir {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                containers,
            },
        );
    }
    pods
}

/// The containers of `/var/log/containers`, by container id.
pub fn container_links(dir: &Path) -> HashMap<String, ContainerLink> {
    read_names(dir)
        .iter()
        .filter_map(|name| parse_container_link(name))
        .collect()
}

/// Every entry's name in `dir` (none if it cannot be read: not a node, or not mounted).
fn read_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// `<namespace>_<pod>_<uid>`: names of namespaces and pods never hold `_` (DNS names).
fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !namespace.is_empty() && !pod.is_empty() && uid.len() == 36)
        .then_some((namespace, pod, uid))
}

/// `<pod>_<namespace>_<container>-<64 hex digits>.log`.
fn parse_container_link(name: &str) -> Option<(String, ContainerLink)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some((
        id.to_owned(),
        ContainerLink {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5b0c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_of_pod_directories_and_container_links() {
        assert_eq!(
            parse_pod_dir(&format!("shop_checkout-7d9f8b6c5d-x2k4z_{UID}")),
            Some(("shop", "checkout-7d9f8b6c5d-x2k4z", UID))
        );
        assert_eq!(parse_pod_dir("shop_checkout"), None);
        assert_eq!(parse_pod_dir(&format!("a_b_c_{UID}")), None);
        assert_eq!(parse_pod_dir(&format!("_b_{UID}")), None);
        let (id, link) =
            parse_container_link(&format!("checkout-7d9f8b6c5d-x2k4z_shop_server-{ID}.log"))
                .unwrap();
        assert_eq!(id, ID);
        assert_eq!(
            link,
            ContainerLink {
                namespace: "shop".into(),
                pod: "checkout-7d9f8b6c5d-x2k4z".into(),
                container: "server".into()
            }
        );
        for bad in [
            "x.log",
            "a_b_c-123.log",
            &format!("a_b-{ID}.log"),
            &format!("a_b_c-{ID}"),
            "",
        ] {
            assert_eq!(parse_container_link(bad), None, "{bad}");
        }
    }

    #[test]
    fn directories_as_kubelet_lays_them_out() {
        let root = std::env::temp_dir().join(format!("obs-kubelet-{}", std::process::id()));
        let pods = root.join("pods");
        let containers = root.join("containers");
        let pod = pods.join(format!("shop_checkout-7d9f8b6c5d-x2k4z_{UID}"));
        std::fs::create_dir_all(pod.join("server")).unwrap();
        std::fs::create_dir_all(pod.join("sidecar")).unwrap();
        std::fs::create_dir_all(pods.join("not-a-pod")).unwrap();
        std::fs::create_dir_all(&containers).unwrap();
        std::fs::write(
            containers.join(format!("checkout-7d9f8b6c5d-x2k4z_shop_server-{ID}.log")),
            "",
        )
        .unwrap();
        let found = pod_dirs(&pods);
        assert_eq!(found.len(), 1);
        assert_eq!(found[UID].containers, ["server", "sidecar"]);
        assert_eq!(container_links(&containers)[ID].container, "server");
        // A node without them: nothing, no error.
        assert!(pod_dirs(&root.join("missing")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
