//! Who owns a pod: its controller (from the API server's `ownerReferences`) and that
//! controller's own owner, or, without the API, what the pod's name says.
//!
//! - A Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>`, and its pods
//!   `<replicaset>-<suffix>`: the hash and the suffix are drawn from the alphabet Kubernetes
//!   uses for generated names (`bcdfghjklmnpqrstvwxz2456789`), the suffix 5 long. So a pod
//!   name ending in two such segments names its Deployment and ReplicaSet.
//! - A CronJob's Jobs are named `<cronjob>-<scheduled time in minutes>` (digits).
//! - Other controllers (DaemonSet, StatefulSet, a Job of its own) cannot be told from a name:
//!   a single generated suffix, or an ordinal, fits several of them.

/// The controllers above a pod, where known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owners {
    pub deployment: Option<String>,
    pub replicaset: Option<String>,
    pub daemonset: Option<String>,
    pub statefulset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
}

impl Owners {
    /// The top owner's name (`k8s_owner_name`), the one a service is usually named for.
    pub fn top(&self) -> Option<&str> {
        [
            &self.deployment,
            &self.statefulset,
            &self.daemonset,
            &self.cronjob,
            &self.job,
            &self.replicaset,
        ]
        .into_iter()
        .find_map(|o| o.as_deref())
    }

    /// What a pod's name says (no API server): a Deployment's pods only.
    pub fn from_pod_name(pod: &str) -> Self {
        let Some((replicaset, suffix)) = pod.rsplit_once('-') else {
            return Self::default();
        };
        let Some((deployment, hash)) = replicaset.rsplit_once('-') else {
            return Self::default();
        };
        if suffix.len() == 5
            && generated(suffix)
            && (6..=10).contains(&hash.len())
            && generated(hash)
            && !deployment.is_empty()
        {
            Self {
                deployment: Some(deployment.to_owned()),
                replicaset: Some(replicaset.to_owned()),
                ..Self::default()
            }
        } else {
            Self::default()
        }
    }

    /// From the pod's controller (`ownerReferences` with `controller: true`) and its
    /// `pod-template-hash` label (set on a Deployment's pods: their ReplicaSet is named
    /// `<deployment>-<hash>`).
    pub fn from_controller(kind: &str, name: &str, pod_template_hash: Option<&str>) -> Self {
        let name = name.to_owned();
        match kind {
            "ReplicaSet" => {
                let deployment = pod_template_hash.and_then(|hash| {
                    name.strip_suffix(hash)?
                        .strip_suffix('-')
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned)
                });
                Self {
                    deployment,
                    replicaset: Some(name),
                    ..Self::default()
                }
            }
            "DaemonSet" => Self {
                daemonset: Some(name),
                ..Self::default()
            },
            "StatefulSet" => Self {
                statefulset: Some(name),
                ..Self::default()
            },
            "Job" => {
                let cronjob = name
                    .rsplit_once('-')
                    .filter(|(c, t)| {
                        !c.is_empty() && t.len() >= 8 && t.bytes().all(|b| b.is_ascii_digit())
                    })
                    .map(|(c, _)| c.to_owned());
                Self {
                    job: Some(name),
                    cronjob,
                    ..Self::default()
                }
            }
            _ => Self::default(),
        }
    }
}

/// Drawn from the alphabet of generated names (no vowels, no look-alike digits).
fn generated(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_pods_name_it() {
        let o = Owners::from_pod_name("checkout-7d9f8b6c5d-x2k4z");
        assert_eq!(o.deployment.as_deref(), Some("checkout"));
        assert_eq!(o.replicaset.as_deref(), Some("checkout-7d9f8b6c5d"));
        assert_eq!(o.top(), Some("checkout"));
        let o = Owners::from_pod_name("api-gateway-v2-5c7b9d8f46-bq2zl");
        assert_eq!(o.deployment.as_deref(), Some("api-gateway-v2"));
        // Not a Deployment's: a StatefulSet's ordinal, a DaemonSet's single suffix, a vowel.
        for pod in [
            "db-0",
            "node-exporter-x2k4z",
            "web-abcdefgh-x2k4z",
            "solo",
            "-x-y",
        ] {
            assert_eq!(Owners::from_pod_name(pod), Owners::default(), "{pod}");
        }
    }

    #[test]
    fn controllers_from_the_api() {
        let rs = Owners::from_controller("ReplicaSet", "checkout-7d9f8b6c5d", Some("7d9f8b6c5d"));
        assert_eq!(rs.deployment.as_deref(), Some("checkout"));
        // A bare ReplicaSet (no matching hash): its own owner.
        let bare = Owners::from_controller("ReplicaSet", "frontend", None);
        assert_eq!(
            (bare.deployment.as_deref(), bare.top()),
            (None, Some("frontend"))
        );
        let job = Owners::from_controller("Job", "report-29012345", None);
        assert_eq!(job.cronjob.as_deref(), Some("report"));
        assert_eq!(job.top(), Some("report"));
        let own = Owners::from_controller("Job", "migrate", None);
        assert_eq!((own.cronjob.as_deref(), own.top()), (None, Some("migrate")));
        assert_eq!(
            Owners::from_controller("StatefulSet", "db", None).top(),
            Some("db")
        );
        assert_eq!(
            Owners::from_controller("DaemonSet", "agent", None).top(),
            Some("agent")
        );
        assert_eq!(
            Owners::from_controller("Node", "n1", None),
            Owners::default()
        );
    }
}
