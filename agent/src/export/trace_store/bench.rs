//! The cost of an insert, measured.

use std::{sync::Arc, time::Instant};

use super::*;
use crate::spans::trace::{HttpAttributes, Resource, SpanKind};

/// A long stream of single-span traces keeps the store at its bound and listable; with
/// `cargo test --release -p obs-agent store_insert_cost -- --nocapture` it also prints
/// the cost of an insert (a figure, not an assertion).
#[test]
fn store_insert_cost() {
    let resource = Arc::new(Resource {
        service_name: "s".into(),
        instance_id: "i".into(),
        pid: 1,
        executable_name: "s".into(),
        host_name: "h".into(),
        k8s: None,
    });
    let route: Arc<str> = Arc::from("/");
    let store = TraceStore::new(10_000);
    let n: u64 = if cfg!(debug_assertions) {
        50_000
    } else {
        2_000_000
    };
    let server = Some("127.0.0.1:8080".parse().unwrap());
    let client = Some("127.0.0.1:5000".parse().unwrap());
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(("/".to_owned(), route.clone(), resource.clone(), i));
    }
    let base = t.elapsed().as_nanos() as f64 / n as f64;
    println!("{base:.1} ns per span to build its parts");
    let t = Instant::now();
    for i in 0..n {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&i.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes());
        trace_id[8..].copy_from_slice(&i.to_le_bytes());
        store.insert(Span {
            trace_id,
            span_id: [1; 8],
            parent_span_id: None,
            sampled: true,
            kind: SpanKind::Server,
            start_unix_nanos: i,
            end_unix_nanos: i + 1,
            error: false,
            http: HttpAttributes {
                method: "GET",
                status_code: 200,
                path: "/".to_owned(),
                route: Some(route.clone()),
                server,
                client,
            },
            resource: resource.clone(),
        });
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{ns:.1} ns per span (size {} bytes)",
        std::mem::size_of::<Span>()
    );
    assert_eq!(store.span_count(), 10_000);
    assert_eq!(store.trace_count(), 10_000);
    let t = Instant::now();
    let listed = store.summaries(100, 0).len();
    println!("{:?} to list {listed} of 10,000 traces", t.elapsed());
    assert_eq!(listed, 100);
}
