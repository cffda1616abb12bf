//! Go 1.22+ route patterns: for overlapping ServeMux patterns, the agent's http_route equals
//! the pattern Go itself matched (r.Pattern, counted by the server), request by request, on
//! Go 1.23 (bucket maps in the routing tree) and the newest Go (swiss tables).

use obs_integration_tests::{
    go_build,
    load::{drive, Call},
    toolchain, Agent, BuildMode, GoServer, GoVersion, Toolchain,
};

fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    for n in 0..20 {
        // (method, path, expected route)
        let cases: [(&'static str, String, &'static str); 16] = [
            ("GET", format!("/items/{n}"), "/items/{id}"),
            ("HEAD", format!("/items/{n}"), "/items/{id}"),
            ("POST", format!("/items/{n}"), "/items/{id}"),
            ("PUT", format!("/items/{n}"), "/items/"),
            ("GET", "/items/special".into(), "/items/special"),
            (
                "GET",
                format!("/items/{n}/parts/p{n}"),
                "/items/{id}/parts/{part}",
            ),
            ("GET", format!("/items/{n}/other"), "/items/"),
            ("GET", format!("/files/a/{n}/c.txt"), "/files/{path...}"),
            ("GET", "/exact/".into(), "/exact/{$}"),
            ("GET", format!("/exact/{n}"), "/"),
            (
                "DELETE",
                format!("/admin/users/u{n}"),
                "/admin/users/{name}",
            ),
            ("GET", format!("/admin/users/u{n}"), "/"),
            ("GET", "/h".into(), "/h"),
            ("GET", format!("/i/{n}"), "/i/"),
            ("GET", format!("/j/{n}"), "/j/{x}"),
            ("GET", format!("/nowhere/{n}"), "/"),
        ];
        for (method, path, route) in cases {
            calls.push(Call::new(method, path, route, 200));
        }
    }
    calls
}

fn routes_match_go(version: GoVersion) {
    routes_match_go_build(&version.toolchain(), BuildMode::Default);
}

fn routes_match_go_build(toolchain: &Toolchain, mode: BuildMode) {
    let service = format!("patterns-go{}-{}", toolchain.minor, mode.name());
    let bin = go_build("gopatterns", toolchain, mode);
    let server = GoServer::start_bin(&bin, &[("OTEL_SERVICE_NAME", &service)]);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let calls = calls();
    let client = drive(&server.url(""), &calls, 8);
    assert!(
        client.failures.is_empty(),
        "{:?}",
        &client.failures[..client.failures.len().min(5)]
    );

    let served: std::collections::BTreeMap<String, u64> = server.served().into_iter().collect();
    assert_eq!(
        served, client.counts,
        "the server's own r.Pattern counts vs the test's expectations"
    );
    let counted = agent
        .scrape_when_counted(client.total(), |s| s.server_counts_without_stats(&service))
        .server_counts_without_stats(&service);
    assert_eq!(
        counted,
        served,
        "agent's http_route vs Go's r.Pattern; agent log:\n{}",
        agent.log()
    );
}

#[test]
fn routes_match_go_1_23_bucket_maps() {
    routes_match_go(GoVersion::Go123);
}

#[test]
fn routes_match_newest_go_swiss_maps() {
    routes_match_go(GoVersion::New);
}

/// Stripped PIE binaries: functions from .gopclntab, layouts from the offsets table.
#[test]
fn routes_match_go_1_23_stripped_pie() {
    routes_match_go_build(&toolchain("1.23"), BuildMode::Pie);
}

#[test]
fn routes_match_newest_go_stripped_cgo_external() {
    routes_match_go_build(&GoVersion::New.toolchain(), BuildMode::CgoExternal);
}
