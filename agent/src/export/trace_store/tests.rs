//! The store's bounds, eviction and admission, and what the endpoints show of it.

use std::sync::Arc;

use super::*;
use crate::spans::trace::{fixtures, hex, SpanKind};

use crate::spans::trace::fixtures::resource as svc;

fn span(trace: u8, id: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> Span {
    let mut span = fixtures::span(trace, id, start_ms, end_ms);
    span.parent_span_id = parent.map(|p| [p; 8]);
    span.http.path = format!("/{id}");
    span.http.route = Some(Arc::from(format!("/{id}")));
    span
}

#[test]
fn a_flood_enters_at_about_the_bound_per_second_whole_traces_and_errors_always() {
    const SECOND: u64 = 1_000_000_000;
    let store = TraceStore::new(2000);
    // A trace of two spans (a call, then the request it was made for), ending at `at`.
    let insert_trace = |n: u32, at: u64, error: bool| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        for (span_id, parent) in [(2, Some(1)), (1, None)] {
            let mut s = span(0, span_id, parent, 0, 0);
            s.trace_id = id;
            s.end_unix_nanos = at;
            s.error = error && parent.is_none();
            store.insert(s);
        }
        id
    };
    let t0 = 1_700_000_000 * SECOND;
    // First second: 20,000 spans, all admitted (no rate known yet).
    for n in 0..10_000 {
        insert_trace(n, t0 + u64::from(n) * 1000, false);
    }
    assert_eq!(store.span_count(), 2000);
    // Next second: the bar lets in about 2,000 of the 20,000 offered a second: 10%.
    // End times out of order by up to 50 µs, as spans of several processes come.
    let ids: Vec<_> = (0..2_000)
        .map(|n| {
            let at = t0 + SECOND + 50_000 + u64::from(n) * 1000 - u64::from(n % 7) * 8_000;
            insert_trace(100_000 + n, at, n % 100 == 0)
        })
        .collect();
    let stored: Vec<_> = ids.iter().filter_map(|id| store.trace(id)).collect();
    assert!(
        (140..=260).contains(&stored.len()),
        "{} of 2,000 new traces stored",
        stored.len()
    );
    // Whole traces (both spans or none), but for error spans, which always enter.
    for (n, id) in ids.iter().enumerate() {
        let spans = store.trace(id).map_or(0, |s| s.len());
        if n % 100 == 0 {
            assert!(spans >= 1, "error trace {n} missing");
        } else {
            assert!(spans == 0 || spans == 2, "trace {n} has {spans} spans");
        }
    }
    // After a quiet spell, everything enters again.
    let late = insert_trace(999_999, t0 + 10 * SECOND, false);
    assert_eq!(store.trace(&late).map(|s| s.len()), Some(2));
}

#[test]
fn evicts_least_recently_updated_traces_by_span_count() {
    let store = TraceStore::new(5);
    for t in 1..=3 {
        store.insert(span(t, 1, None, 0, 1));
        store.insert(span(t, 2, Some(1), 0, 1));
    }
    // 6 spans > 5: trace 1 went whole.
    assert_eq!(store.span_count(), 4);
    assert!(store.trace(&[1; 16]).is_none());
    // Touching trace 2 makes trace 3 the oldest.
    store.insert(span(2, 3, Some(1), 0, 1));
    store.insert(span(4, 1, None, 0, 1));
    assert!(store.trace(&[3; 16]).is_none());
    assert_eq!(store.trace(&[2; 16]).unwrap().len(), 3);
    assert_eq!(store.span_count(), 4);
    // One trace alone never grows past the bound.
    for id in 10..30 {
        store.insert(span(9, id, None, 0, 1));
    }
    assert_eq!(store.span_count(), 5);
    assert_eq!(store.trace_count(), 1);
}

#[test]
fn evicts_whole_traces_oldest_update_first() {
    let store = TraceStore::new(6);
    // Traces 1, 2, 3 of 2 spans each: full.
    for t in 1..=3 {
        store.insert(span(t, 1, None, 0, 1));
        store.insert(span(t, 2, Some(1), 0, 1));
    }
    assert_eq!((store.span_count(), store.trace_count()), (6, 3));
    // Updates make 1 the newest: 2 is now the oldest, then 3.
    store.insert(span(1, 3, Some(1), 0, 1));
    assert!(store.trace(&[2; 16]).is_none(), "trace 2 evicted whole");
    assert_eq!(store.trace(&[1; 16]).unwrap().len(), 3);
    assert_eq!(store.trace(&[3; 16]).unwrap().len(), 2);
    // A new trace of 2 spans: 3 goes (the oldest), 1 stays.
    store.insert(span(4, 1, None, 0, 1));
    store.insert(span(4, 2, Some(1), 0, 1));
    assert!(store.trace(&[3; 16]).is_none());
    assert_eq!(store.trace(&[1; 16]).unwrap().len(), 3);
    assert_eq!(store.span_count(), 5);
    // Then 1, the oldest now, goes whole for the next ones (5 + 2 > 6).
    store.insert(span(5, 1, None, 0, 1));
    store.insert(span(5, 2, Some(1), 0, 1));
    assert!(store.trace(&[1; 16]).is_none());
    assert_eq!(store.trace_count(), 2);
    assert_eq!(store.span_count(), 4);
}

#[test]
fn the_bound_holds_and_slots_are_reused() {
    let store = TraceStore::new(100);
    for n in 0..10_000u32 {
        let mut s = span(0, 1, None, 0, 1);
        s.trace_id[..4].copy_from_slice(&n.to_be_bytes());
        s.span_id[..4].copy_from_slice(&n.to_be_bytes());
        store.insert(s.clone());
        if n % 3 == 0 {
            s.span_id[4] = 9;
            s.parent_span_id = Some(s.span_id);
            store.insert(s);
        }
        assert!(store.span_count() <= 100);
    }
    assert!(store.slots_allocated() <= 100);
    assert!(store.span_count() >= 99);
}

#[test]
fn lookups_after_the_slots_wrapped_around_many_times() {
    let store = TraceStore::new(8);
    let id = |n: u32| {
        let mut id = [0xee; 16];
        id[12..].copy_from_slice(&n.to_be_bytes());
        id
    };
    // Traces of 1 to 3 spans, so that slots are freed and reused out of order.
    for n in 0..1_000u32 {
        for k in 0..=(n % 3) {
            let mut s = span(0, k as u8 + 1, (k > 0).then_some(1), n.into(), n as u64 + 1);
            s.trace_id = id(n);
            store.insert(s);
        }
    }
    // The last traces are whole and intact, the older ones gone.
    let last = store.trace(&id(999)).unwrap();
    assert_eq!(last.len(), 1);
    let before = store.trace(&id(998)).unwrap();
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|s| s.trace_id == id(998)));
    assert_eq!(
        before.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(store.trace(&id(997)).unwrap().len(), 2);
    assert!(store.trace(&id(990)).is_none());
    assert_eq!(store.span_count(), 7);
    assert_eq!(store.trace_count(), 4);
    let listed: Vec<_> = store
        .summaries(10, 0)
        .into_iter()
        .map(|s| s.span_count)
        .collect();
    assert_eq!(listed, [1, 3, 2, 1]);
}

#[test]
fn one_trace_alone_keeps_its_first_spans() {
    let store = TraceStore::new(3);
    store.insert(span(1, 1, None, 0, 1));
    for id in 2..10 {
        store.insert(span(2, id, Some(1), 0, 1));
    }
    // Trace 1 made room; trace 2 kept its first three spans.
    assert!(store.trace(&[1; 16]).is_none());
    let kept = store.trace(&[2; 16]).unwrap();
    assert_eq!(
        kept.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

#[test]
fn summaries_newest_first_with_filters() {
    let store = TraceStore::new(100);
    store.insert(span(1, 1, None, 100, 150));
    store.insert(span(2, 1, None, 200, 202));
    let mut failed = span(2, 2, Some(1), 200, 201);
    failed.error = true;
    store.insert(failed);
    let all = store.summaries(10, 0);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].trace_id, hex(&[2; 16]));
    assert_eq!(
        serde_json::to_value(&all[0]).unwrap(),
        serde_json::json!({
            "trace_id": "02020202020202020202020202020202",
            "root_service": "front",
            "root_name": "GET /1",
            "start_unix_nanos": 200_000_000u64,
            "duration_ms": 2.0,
            "span_count": 2,
            "error": true,
        })
    );
    let slow = store.summaries(10, 10_000_000);
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].trace_id, hex(&[1; 16]));
    assert_eq!(store.summaries(1, 0).len(), 1);
}

#[test]
fn trace_json_shape() {
    let mut s = span(1, 2, Some(1), 1, 3);
    s.http.server = Some("127.0.0.1:8080".parse().unwrap());
    s.http.client = Some("[::1]:5000".parse().unwrap());
    let mut call = span(1, 3, Some(2), 2, 3);
    call.kind = SpanKind::Client;
    call.http.route = None;
    call.http.server = Some("10.1.2.3:80".parse().unwrap());
    call.http.status_code = 404;
    call.error = true;
    let v = serde_json::to_value(TraceJson::new(&[1; 16], &[s, call])).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "trace_id": "01010101010101010101010101010101",
            "span_count": 2,
            "spans": [{
                "trace_id": "01010101010101010101010101010101",
                "span_id": "0202020202020202",
                "parent_span_id": "0101010101010101",
                "kind": "server",
                "name": "GET /2",
                "start_unix_nanos": 1_000_000u64,
                "end_unix_nanos": 3_000_000u64,
                "duration_ms": 2.0,
                "status": "OK",
                "attributes": {
                    "http.request.method": "GET",
                    "http.response.status_code": 200,
                    "url.path": "/2",
                    "network.protocol.version": "1.1",
                    "http.route": "/2",
                    "server.address": "127.0.0.1",
                    "server.port": 8080,
                    "client.address": "::1",
                    "client.port": 5000,
                },
                "resource": {
                    "service.name": "front",
                    "service.instance.id": "h-front",
                    "process.pid": 7,
                    "process.executable.name": "front",
                    "host.name": "h",
                },
            }, {
                "trace_id": "01010101010101010101010101010101",
                "span_id": "0303030303030303",
                "parent_span_id": "0202020202020202",
                "kind": "client",
                "name": "GET",
                "start_unix_nanos": 2_000_000u64,
                "end_unix_nanos": 3_000_000u64,
                "duration_ms": 1.0,
                "status": "ERROR",
                "attributes": {
                    "http.request.method": "GET",
                    "http.response.status_code": 404,
                    "url.path": "/3",
                    "network.protocol.version": "1.1",
                    "server.address": "10.1.2.3",
                    "server.port": 80,
                },
                "resource": {
                    "service.name": "front",
                    "service.instance.id": "h-front",
                    "process.pid": 7,
                    "process.executable.name": "front",
                    "host.name": "h",
                },
            }],
        })
    );
}

#[test]
fn tree_indents_children_and_puts_orphans_at_the_root() {
    let mut back = span(1, 3, Some(2), 2, 9);
    back.resource = svc("back");
    back.error = true;
    let spans = vec![
        span(1, 1, None, 0, 10),
        span(1, 2, Some(1), 1, 9),
        back,
        span(1, 4, Some(1), 9, 10),
        // Its parent (0x63) was never seen.
        span(1, 5, Some(0x63), 20, 21),
    ];
    assert_eq!(
        render_tree(&[1; 16], &spans),
        "trace 01010101010101010101010101010101: 5 spans, 21.000 ms, with errors\n\
         front GET /1 10.000 ms OK\n  \
           front GET /2 8.000 ms OK\n    \
             back GET /3 7.000 ms ERROR\n  \
           front GET /4 1.000 ms OK\n\
         front GET /5 1.000 ms OK\n"
    );
}

#[test]
fn a_parent_cycle_does_not_loop() {
    let spans = vec![span(1, 1, Some(2), 0, 1), span(1, 2, Some(1), 0, 1)];
    // Neither is a root: both shown, once, and no hang.
    assert_eq!(render_tree(&[1; 16], &spans).lines().count(), 3);
}

#[test]
fn trace_ids_parse_from_hex() {
    assert_eq!(
        parse_trace_id("0102030405060708090A0b0c0d0e0f10"),
        Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    );
    assert_eq!(parse_trace_id("01"), None);
    assert_eq!(parse_trace_id("zz02030405060708090a0b0c0d0e0f10"), None);
    assert_eq!(parse_trace_id("ééé030405060708090a0b0c0d0e0f1"), None);
}
