//! Which pod and container a process runs in, from its cgroup path (`/proc/PID/cgroup`), as
//! kubelet lays cgroups out: under `kubepods`, a QoS level (`burstable`, `besteffort`, none
//! for guaranteed pods), the pod (`pod<uid>`), then the container (its runtime's id).
//!
//! Both cgroup drivers, both cgroup versions, and the runtimes' id forms:
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
//!   with underscores>.slice/cri-containerd-<id>.scope` (containerd), `crio-<id>.scope`
//!   (CRI-O), `docker-<id>.scope` (Docker through cri-dockerd);
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (containerd, Docker) or
//!   `.../crio-<id>` (CRI-O);
//! - cgroup v1 lists one line per hierarchy (`N:controllers:path`), v2 one (`0::path`); a
//!   node inside a container (kind) prefixes the path with the node's own cgroup, and a
//!   kubelet with its own cgroup root prefixes the names (`kubelet-kubepods-...`).

/// What a process's cgroup says of its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's uid, with dashes (`5b0c1e2a-...`), as Kubernetes writes it.
    pub pod_uid: String,
    /// The container's id, as its runtime names it (64 hex digits), if the process is in a
    /// container's cgroup (not the pod's own, where the pause process sits).
    pub container_id: Option<String>,
}

/// Why a cgroup path gives no pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotInPod {
    /// No `kubepods` in it: a process outside Kubernetes (not an error).
    Outside,
    /// Under `kubepods`, but not in a shape this agent knows: counted, so that a new layout
    /// is noticed.
    Unrecognised,
}

/// The pod and container of the process whose `/proc/PID/cgroup` is `content`.
pub fn parse(content: &str) -> Result<PodCgroup, NotInPod> {
    let mut seen_kubepods = false;
    for line in content.lines() {
        // `hierarchy:controllers:path`; the path may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let Some(at) = path.find("kubepods") else {
            continue;
        };
        seen_kubepods = true;
        let segment_start = path[..at].rfind('/').map_or(0, |i| i + 1);
        if let Some(found) = parse_kubepods(&path[segment_start..]) {
            return Ok(found);
        }
    }
    Err(if seen_kubepods {
        NotInPod::Unrecognised
    } else {
        NotInPod::Outside
    })
}

/// `kubepods...` onwards: the pod segment, then the container's.
fn parse_kubepods(path: &str) -> Option<PodCgroup> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let mut pod_uid = None;
    for segment in segments.by_ref() {
        if let Some(uid) = pod_segment(segment) {
            pod_uid = Some(uid);
            break;
        }
    }
    let pod_uid = pod_uid?;
    let container_id = segments.next().and_then(container_segment);
    Some(PodCgroup {
        pod_uid,
        container_id,
    })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = name.rfind("pod")?;
    let before = &name[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A container's cgroup: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`
/// (systemd), `<id>` or `crio-<id>` (cgroupfs). Not `crio-conmon-<id>` (CRI-O's monitor).
fn container_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_owned())
}

/// 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Runtimes name containers with 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5b0c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn found(container: bool) -> Result<PodCgroup, NotInPod> {
        Ok(PodCgroup {
            pod_uid: UID.to_owned(),
            container_id: container.then(|| ID.to_owned()),
        })
    }

    #[test]
    fn systemd_driver_every_runtime_and_qos() {
        let u = UID.replace('-', "_");
        for (qos, pod) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{u}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{u}.slice"),
            ),
            ("", format!("kubepods-pod{u}.slice")),
        ] {
            for runtime in ["cri-containerd-", "crio-", "docker-"] {
                let line = format!("0::/kubepods.slice/{qos}{pod}/{runtime}{ID}.scope\n");
                assert_eq!(parse(&line), found(true), "{line}");
            }
        }
    }

    #[test]
    fn cgroupfs_driver_v1_and_v2() {
        let v2 = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
        assert_eq!(parse(&v2), found(true));
        let crio = format!("0::/kubepods/pod{UID}/crio-{ID}\n");
        assert_eq!(parse(&crio), found(true));
        let v1 = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        assert_eq!(parse(&v1), found(true));
    }

    #[test]
    fn nested_nodes_and_the_pods_own_cgroup() {
        // kind: the node is itself a container, and kubelet's cgroups sit under its own.
        let kind = format!("0::/docker/{ID}/kubelet.slice/kubepods/pod{UID}/{ID}\n");
        assert_eq!(parse(&kind), found(true));
        let u = UID.replace('-', "_");
        let kind_systemd = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
             kubelet-kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&kind_systemd), found(true));
        // The pause process, or a process in the pod's cgroup but no container's.
        assert_eq!(parse(&format!("0::/kubepods/pod{UID}\n")), found(false));
        // CRI-O's monitor is not the container.
        let conmon = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&conmon), found(false));
    }

    #[test]
    fn other_paths_are_outside_or_unrecognised() {
        assert_eq!(
            parse("0::/user.slice/user-0.slice/session-1.scope\n"),
            Err(NotInPod::Outside)
        );
        assert_eq!(
            parse("0::/system.slice/nginx.service\n"),
            Err(NotInPod::Outside)
        );
        assert_eq!(parse(""), Err(NotInPod::Outside));
        assert_eq!(
            parse("0::/kubepods/burstable/podnot-a-uid/x\n"),
            Err(NotInPod::Unrecognised)
        );
        assert_eq!(parse("0::/kubepods.slice\n"), Err(NotInPod::Unrecognised));
        // Garbage of every kind: never a panic.
        for s in [
            "::::",
            "0::/kubepods/pod",
            "x:y",
            "0::/kubepods/pod/",
            "\u{0}:\u{0}:/kubepods",
        ] {
            let _ = parse(s);
        }
    }
}
