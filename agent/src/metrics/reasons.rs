//! Every `reason` label of the agent's own metrics, as enums: the one place where they are
//! rendered as label values, and where each list is known up front.

/// An enum of reasons with its label values and the list of all of them.
macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

reasons! {
    /// `obs_agent_events_lost_total{reason}`: events and requests lost, kernel and user side.
    Lost {
        /// The kernel could not reserve room on the ring buffer (the reader fell behind).
        RingFull => "ring_full",
        /// An event of a process the agent no longer (or not yet) keeps state for.
        UnknownProcess => "unknown_process",
        /// Requests still waiting for their response when the connection closed, the
        /// process exited or the connection switched protocols.
        UnansweredRequest => "unanswered_request",
        /// A process's socket table or a connection's request queue was full.
        ConnectionTableFull => "connection_table_full",
    }
}

reasons! {
    /// `obs_agent_decode_errors_total{reason}`: records that could not be decoded or paired.
    DecodeFailure {
        /// A ring-buffer record too short for its header.
        ShortRecord => "short_record",
        /// A record of a kind this agent does not know (agent and kernel programs of
        /// different builds).
        UnknownKind => "unknown_kind",
        /// A record whose size disagrees with its kind.
        WrongSize => "wrong_size",
        /// A response with no request waiting for it.
        UnmatchedResponse => "unmatched_response",
    }
}

reasons! {
    /// `obs_agent_kernel_errors_total{reason}`: problems the kernel programs met.
    KernelError {
        /// Reading the target's memory or a syscall's registers failed.
        TargetRead => "target_read_error",
        /// A goroutine creation was not counted by start function: the kernel's table of
        /// (process, start function) counters was full.
        GoroutineStartTableFull => "goroutine_start_table_full",
    }
}

reasons! {
    /// `obs_agent_attach_failures_total{reason}`: processes the agent could not watch.
    AttachFailure {
        NoSuchProcess => "no_such_process",
        /// Its /proc entries could not be read.
        ProcessUnreadable => "process_unreadable",
        /// Not an error where it is counted (other languages are watched); kept for callers.
        NotGo => "not_go",
        /// A Go program without net/http's server.
        NotHttpServer => "not_http_server",
        /// A Go release without DWARF whose struct offsets the offsets table lacks.
        NoStructOffsets => "no_struct_offsets",
        /// Its binary could not be read or analysed.
        BinaryUnreadable => "binary_unreadable",
        /// The kernel refused a probe.
        AttachFailed => "attach_failed",
    }
}

reasons! {
    /// `obs_agent_spans_dropped_total{reason}`: sampled spans never exported.
    SpanDrop {
        /// The export queue was full (the collector slow or down).
        QueueFull => "queue_full",
        /// Every attempt to export its batch failed.
        ExportFailed => "export_failed",
        /// The export task had ended (shutdown).
        ExporterStopped => "exporter_stopped",
    }
}

reasons! {
    /// `obs_agent_k8s_identity_failures_total{reason}`: processes in a pod that got no
    /// Kubernetes labels.
    K8sIdentityFailure {
        /// Its cgroup path is under `kubepods` but not in a layout the agent knows.
        UnrecognisedCgroup => "unrecognised_cgroup",
        /// Its pod is in neither kubelet's log directories nor the API server's list.
        UnknownPod => "unknown_pod",
    }
}

impl From<&crate::target::kubernetes::IdentityError> for K8sIdentityFailure {
    fn from(e: &crate::target::kubernetes::IdentityError) -> Self {
        use crate::target::kubernetes::IdentityError;
        match e {
            IdentityError::UnrecognisedCgroup => Self::UnrecognisedCgroup,
            IdentityError::UnknownPod => Self::UnknownPod,
        }
    }
}

impl From<&crate::events::DecodeError> for DecodeFailure {
    fn from(e: &crate::events::DecodeError) -> Self {
        use crate::events::DecodeError;
        match e {
            DecodeError::Short(_) => Self::ShortRecord,
            DecodeError::UnknownKind(_) => Self::UnknownKind,
            DecodeError::WrongSize { .. } => Self::WrongSize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_distinct_within_its_metric() {
        fn distinct(labels: Vec<&str>) {
            let mut sorted = labels.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), labels.len(), "{labels:?}");
        }
        distinct(Lost::ALL.iter().map(|r| r.as_str()).collect());
        distinct(DecodeFailure::ALL.iter().map(|r| r.as_str()).collect());
        distinct(KernelError::ALL.iter().map(|r| r.as_str()).collect());
        distinct(AttachFailure::ALL.iter().map(|r| r.as_str()).collect());
        distinct(SpanDrop::ALL.iter().map(|r| r.as_str()).collect());
        distinct(K8sIdentityFailure::ALL.iter().map(|r| r.as_str()).collect());
    }
}
