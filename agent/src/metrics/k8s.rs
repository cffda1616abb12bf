//! A watched process's Kubernetes identity as labels of its series (`k8s_namespace_name`,
//! `k8s_pod_name`, ...): only those known, after the series' own labels; none for a process
//! outside Kubernetes.

use std::{fmt, sync::Arc};

use prometheus_client::encoding::{
    EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
};

use crate::target::kubernetes::PodIdentity;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct K8sLabels(pub Option<Arc<PodIdentity>>);

impl EncodeLabelSet for K8sLabels {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), fmt::Error> {
        let Some(identity) = &self.0 else {
            return Ok(());
        };
        for (_, key, value) in identity.fields() {
            let mut label = encoder.encode_label();
            let mut key_encoder = label.encode_label_key()?;
            EncodeLabelKey::encode(&key, &mut key_encoder)?;
            let mut value_encoder = key_encoder.encode_label_value()?;
            EncodeLabelValue::encode(&value, &mut value_encoder)?;
            value_encoder.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::{text::encode, EncodeLabelSet},
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;
    use crate::target::kubernetes::owner::Owners;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        service_name: String,
        #[prometheus(flatten)]
        k8s: K8sLabels,
    }

    #[test]
    fn known_fields_only_after_the_series_own() {
        let family = Family::<Labels, Counter>::default();
        let mut registry = Registry::default();
        registry.register("requests", "", family.clone());
        let identity = PodIdentity {
            namespace: "shop".into(),
            pod: "checkout-7d9f8b6c5d-x2k4z".into(),
            uid: "u1".into(),
            container: Some("server".into()),
            node: None,
            owners: Owners::from_pod_name("checkout-7d9f8b6c5d-x2k4z"),
            ..PodIdentity::default()
        };
        family
            .get_or_create(&Labels {
                service_name: "checkout".into(),
                k8s: K8sLabels(Some(Arc::new(identity))),
            })
            .inc();
        family
            .get_or_create(&Labels {
                service_name: "local".into(),
                k8s: K8sLabels(None),
            })
            .inc();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "requests_total{service_name=\"checkout\",k8s_namespace_name=\"shop\",\
             k8s_pod_name=\"checkout-7d9f8b6c5d-x2k4z\",k8s_pod_uid=\"u1\",\
             k8s_container_name=\"server\",k8s_deployment_name=\"checkout\",\
             k8s_replicaset_name=\"checkout-7d9f8b6c5d\",k8s_owner_name=\"checkout\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("requests_total{service_name=\"local\"} 1"),
            "{text}"
        );
    }
}
