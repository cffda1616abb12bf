//! deploy/: the Kubernetes manifests pass yamllint and kubernetes-validate (strict, offline
//! schemas), the DaemonSet holds what the agent needs (host pids, a reachable --listen that the
//! port, the scrape annotations and the probes agree with, flags the agent knows), the agent
//! really runs with nothing more than the capabilities and read-only host folders of the
//! DaemonSet the Helm chart renders (deploy/kubernetes/daemonset.yaml is that rendering:
//! tests/tests/helm.rs), and the Dockerfile packages the binary `cargo xtask build` makes. No
//! container engine or cluster exists on the test machines: the image is checked statically.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use obs_integration_tests::{
    agent_bin, free_port, go_app,
    manifests::{
        agent_args, agent_help, chart_dir, check, container, daemonset, deploy_dir, find,
        helm_template, manifest_tool, strings, yaml_documents, NAMESPACE, RELEASE,
    },
    scrape,
    servers::reported_port,
    tempdir, wait_for, workspace_root, GoVersion, Proc,
};
use serde_json::Value;

/// The oldest Kubernetes the manifests support (`securityContext.appArmorProfile` is 1.30+)
/// and the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
const IMAGE_BINARY: &str = "obs-agent";

/// Every Kubernetes manifest under deploy/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

fn all_documents() -> Vec<Value> {
    manifests().iter().flat_map(|m| yaml_documents(m)).collect()
}

/// The value given to `flag` in `args` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_owned)
        }
    })
}

/// The container's listen address, from its args.
fn listen(container: &Value) -> SocketAddr {
    let args = strings(&container["args"]);
    let addr = flag_value(&args, "--listen").unwrap_or_else(|| {
        panic!(
            "the container's args {args:?} lack --listen: the agent would serve on loopback only"
        )
    });
    addr.parse()
        .unwrap_or_else(|e| panic!("--listen {addr:?}: {e}"))
}

#[test]
fn manifests_pass_yamllint() {
    let mut cmd = manifest_tool("yamllint");
    cmd.arg("--strict")
        .arg("--config-file")
        .arg(deploy_dir().join(".yamllint.yaml"))
        .args(manifests())
        .arg(deploy_dir().join(".yamllint.yaml"));
    check(cmd);
}

#[test]
fn manifests_validate_against_the_kubernetes_api() {
    for version in KUBERNETES_VERSIONS {
        let mut cmd = manifest_tool("kubernetes-validate");
        cmd.args(["--strict", "--kubernetes-version", version])
            .args(manifests());
        let out = check(cmd);
        // Every document was checked (an unknown kind would be skipped with a warning).
        let passed = out.matches(" passed for resource ").count();
        assert_eq!(passed, all_documents().len(), "{out}");
    }
}

#[test]
fn daemonset_is_reachable_by_prometheus_and_probes() {
    let docs = all_documents();
    let ds = daemonset(&docs);
    let pod = &ds["spec"]["template"];
    let c = container(ds);
    let addr = listen(c);
    assert!(
        addr.ip().is_unspecified(),
        "--listen {addr}: Prometheus scrapes the pod's IP, so listen on all addresses"
    );
    let port = addr.port();

    let ports = c["ports"]
        .as_array()
        .expect("the container declares its ports");
    let metrics = ports
        .iter()
        .find(|p| p["containerPort"] == port)
        .unwrap_or_else(|| panic!("no containerPort {port} (the --listen port) in {ports:?}"));
    let port_name = metrics["name"].as_str().expect("the metrics port is named");

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    if let Some(path) = annotations.get("prometheus.io/path") {
        assert_eq!(path, "/metrics");
    }

    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(get) = c.get(probe).map(|p| &p["httpGet"]) else {
            assert_ne!(probe, "livenessProbe", "no liveness probe");
            assert_ne!(probe, "readinessProbe", "no readiness probe");
            continue;
        };
        assert_eq!(get["path"], "/healthz", "{probe} path");
        assert!(
            get["port"] == port_name || get["port"] == port,
            "{probe} port {} is not the metrics port ({port_name}, {port})",
            get["port"]
        );
    }
}

#[test]
fn daemonset_has_what_the_agent_needs() {
    let docs = all_documents();
    let ds = daemonset(&docs);
    let spec = &ds["spec"]["template"]["spec"];
    let c = container(ds);
    let namespace = ds["metadata"]["namespace"].as_str().expect("a namespace");

    assert_eq!(
        spec["hostPID"], true,
        "the agent finds and reads the node's processes through /proc"
    );
    assert!(
        c.get("command").is_none(),
        "`command` replaces the image's ENTRYPOINT ({IMAGE_BINARY})"
    );

    // Least privilege, and enough (the_agent_runs_with_only_the_manifests_capabilities).
    let security = &c["securityContext"];
    assert_ne!(security["privileged"], true, "capabilities, not privileged");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["runAsUser"], 0,
        "the agent refuses to run as non-root"
    );
    let caps = strings(&security["capabilities"]["add"]);
    if !caps.iter().any(|c| c == "SYS_ADMIN") {
        // Without CAP_SYS_ADMIN the agent cannot mount tracefs: the node's must be mounted in.
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == "/sys/kernel/tracing"))
            .expect("no CAP_SYS_ADMIN, so the host's /sys/kernel/tracing must be mounted");
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("the tracefs mount's volume");
        assert_eq!(volume["hostPath"]["path"], "/sys/kernel/tracing");
    }

    // Scheduled on every node, replaced one slice at a time, never two per node.
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent must tolerate every taint to run on every node: {tolerations:?}"
    );
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert!(update["rollingUpdate"].get("maxUnavailable").is_some());
    assert_eq!(
        update["rollingUpdate"]["maxSurge"], 0,
        "two agents on one node would both count every request"
    );

    // Labels the selector needs, and the objects the pod refers to, exist.
    let selector = ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the pod template lacks selector label {k}");
    }
    let account = spec["serviceAccountName"]
        .as_str()
        .expect("a service account");
    assert!(
        find(&docs, "ServiceAccount")
            .iter()
            .any(|s| s["metadata"]["name"] == account && s["metadata"]["namespace"] == namespace),
        "no ServiceAccount {namespace}/{account} in the manifests"
    );
    let ns = find(&docs, "Namespace")
        .into_iter()
        .find(|n| n["metadata"]["name"] == namespace)
        .unwrap_or_else(|| panic!("no Namespace {namespace} in the manifests"));
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "hostPID and added capabilities are rejected under the baseline Pod Security Standard"
    );
    let volumes: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for mount in c["volumeMounts"].as_array().into_iter().flatten() {
        assert!(volumes.contains(mount["name"].as_str().unwrap()), "{mount}");
    }

    let resources = &c["resources"];
    for key in ["cpu", "memory"] {
        assert!(resources["requests"].get(key).is_some(), "no {key} request");
    }
    assert!(
        resources["limits"].get("memory").is_some(),
        "no memory limit"
    );
}

#[test]
fn every_flag_in_the_manifest_exists_in_the_agent() {
    let docs = all_documents();
    let args = strings(&container(daemonset(&docs))["args"]);
    let help = agent_help();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split('=').next().unwrap();
        assert!(
            help.contains(&format!(" {name} ")),
            "obs-agent --help does not list {name}:\n{help}"
        );
    }
    // And the agent's own parser accepts them with their values (it stops at --help).
    let mut parse = Command::new(agent_bin());
    parse.args(&args).arg("--help");
    check(parse);
}

/// Dockerfile instructions: (keyword, rest), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                let (keyword, rest) = pending
                    .split_once(char::is_whitespace)
                    .unwrap_or((&pending, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_owned()));
                pending.clear();
            }
        }
    }
    out
}

fn instructions<'a>(docker: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    docker
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, r)| r.as_str())
        .collect()
}

/// An exec-form (JSON array) instruction's words.
fn exec_form(instruction: &str) -> Vec<String> {
    serde_json::from_str(instruction)
        .unwrap_or_else(|_| panic!("{instruction}: use the exec (JSON array) form"))
}

#[test]
fn dockerfile_packages_the_agent_xtask_builds() {
    let docker = dockerfile();
    assert_eq!(docker.first().map(|(k, _)| k.as_str()), Some("FROM"));
    let entrypoint = instructions(&docker, "ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1, "one ENTRYPOINT");
    let entrypoint = exec_form(entrypoint[0]);
    let binary = Path::new(&entrypoint[0]);
    assert_eq!(binary.file_name().unwrap(), IMAGE_BINARY);
    // The binary answers to that name (clap's `name`, shown in its usage line).
    let help = check({
        let mut c = Command::new(agent_bin());
        c.arg("--help");
        c
    });
    assert!(help.contains(&format!("Usage: {IMAGE_BINARY} ")), "{help}");

    // It copies the very file `cargo xtask build` wrote and these tests ran.
    let copies = instructions(&docker, "COPY");
    assert_eq!(copies.len(), 1, "one COPY (the agent): {copies:?}");
    let words: Vec<&str> = copies[0].split_whitespace().collect();
    assert_eq!(words.len(), 2, "COPY SOURCE DEST: {}", copies[0]);
    assert_eq!(
        Path::new(words[1]),
        binary,
        "COPY's destination is the ENTRYPOINT"
    );
    let source = workspace_root().join(words[0]);
    let copied = std::fs::metadata(&source).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the Dockerfile copies what `cargo xtask build` writes)",
            source.display()
        )
    });
    let built = std::fs::metadata(agent_bin()).unwrap();
    assert!(
        copied.dev() == built.dev() && copied.ino() == built.ino(),
        "the Dockerfile copies {}, not the agent xtask built ({})",
        source.display(),
        agent_bin().display()
    );
    assert!(copied.permissions().mode() & 0o111 != 0, "not executable");

    // The build context (the workspace, target/ is gigabytes) sends only that file.
    let ignore = std::fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore"))
        .expect("deploy/Dockerfile.dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules, ["*".to_owned(), format!("!{}", words[0])]);

    // The image's default arguments listen where the DaemonSet does.
    let docs = all_documents();
    let c = container(daemonset(&docs));
    let cmd = exec_form(instructions(&docker, "CMD").first().expect("a CMD"));
    let image_listen: SocketAddr = flag_value(&cmd, "--listen")
        .expect("CMD --listen")
        .parse()
        .unwrap();
    assert_eq!(image_listen, listen(c));
    assert_eq!(
        instructions(&docker, "EXPOSE"),
        [listen(c).port().to_string()]
    );

    // The base image's glibc runs the binary: every GLIBC_x.y it needs is at most Debian
    // 12's (2.36), the release the agent is built on.
    let from = instructions(&docker, "FROM")[0];
    assert!(
        from.starts_with("debian:bookworm") || from.starts_with("debian:12"),
        "FROM {from}: the binary is built on Debian 12; check its glibc here before changing"
    );
    let symbols = check({
        let mut c = Command::new("objdump");
        c.arg("-T").arg(agent_bin());
        c
    });
    let newest = symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the agent links glibc");
    assert!(
        newest <= (2, 36),
        "the agent needs glibc {newest:?}, Debian 12 has 2.36"
    );
}

/// The capabilities the container keeps, for setpriv: `-all,+bpf,+perfmon,...`.
fn bounding_set(container: &Value) -> String {
    let mut set = "-all".to_owned();
    for cap in strings(&container["securityContext"]["capabilities"]["add"]) {
        let cap = cap.strip_prefix("CAP_").unwrap_or(&cap).to_lowercase();
        set.push_str(&format!(",+{cap}"));
    }
    set
}

/// Runs the agent as the pod would: root with only the capabilities of the DaemonSet the Helm
/// chart renders (the plain manifest is the same, tests/tests/helm.rs), no new privileges, its
/// args (listening on a free loopback port instead), tracefs as it provides it (the node's,
/// read-only, or none) and its other host folders read-only where it mounts them so. A Go
/// service of another user, whose binary only that user may read, must be watched and its
/// requests counted.
#[test]
fn the_agent_runs_with_only_the_manifests_capabilities() {
    let rendered = helm_template(&chart_dir(), RELEASE, NAMESPACE, &serde_json::json!({}));
    let ds = rendered.one("DaemonSet");
    let c = container(ds);
    let spec = &ds["spec"]["template"]["spec"];

    // The service: uid 65534, binary mode 0700 in a folder of its own.
    let dir = tempdir();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let service = dir.join("deploysvc");
    std::fs::copy(go_app("goserver", GoVersion::New), &service).unwrap();
    std::os::unix::fs::chown(&service, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port_file = dir.join("port");
    let server = Proc {
        child: Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&service)
            .args(["-addr", "127.0.0.1:0", "-port-file"])
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux)"),
    };
    let server_port = reported_port(&port_file, "the service");

    // tracefs as the pod sees it, in a mount namespace of the agent's own.
    let tracefs_mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == "/sys/kernel/tracing"));
    let tracefs = match tracefs_mount {
        Some(m) if m["readOnly"] == true => {
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; \
             mount -o remount,bind,ro /sys/kernel/tracing"
        }
        Some(_) => {
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing"
        }
        None => {
            "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
             true"
        }
    };
    // The other host folders it mounts read-only at their own paths (the kubelet's pod and
    // container logs) are read-only for the agent too, where this machine has them.
    let mut read_only = String::new();
    for mount in c["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("the mount's volume");
        if path == "/sys/kernel/tracing" || volume.get("hostPath").is_none() {
            continue;
        }
        assert_eq!(
            volume["hostPath"]["path"], path,
            "the test mounts host folders at their own paths"
        );
        if mount["readOnly"] == true {
            read_only.push_str(&format!(
                " && {{ ! [ -d {path} ] || {{ mount --bind {path} {path} && \
                 mount -o remount,bind,ro {path}; }}; }}"
            ));
        }
    }
    let metrics_port = free_port();
    let mut args = agent_args(c);
    let listen_at = args.iter().position(|a| a == "--listen").expect("--listen");
    args[listen_at + 1] = format!("127.0.0.1:{metrics_port}");
    let log_path = dir.join("agent.log");
    let mut setpriv = vec![
        "setpriv".to_owned(),
        format!("--bounding-set={}", bounding_set(c)),
        "--inh-caps=-all".to_owned(),
    ];
    if c["securityContext"]["allowPrivilegeEscalation"] == false {
        setpriv.push("--no-new-privs".to_owned());
    }
    assert_eq!(
        spec["hostPID"], true,
        "the test runs in the host pid namespace"
    );
    let agent = Proc {
        child: Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{tracefs}{read_only} && exec \"$@\""))
            .arg("sh")
            .args(&setpriv)
            .arg(agent_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("unshare (util-linux)"),
    };
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let healthz = format!("http://127.0.0.1:{metrics_port}/healthz");
    let mut agent = agent;
    let up = wait_for(Duration::from_secs(30), || {
        if !agent.is_running() {
            return Some(false);
        }
        ureq::get(&healthz).call().ok().map(|_| true)
    });
    assert_eq!(
        up,
        Some(true),
        "the agent did not come up with capabilities {}; its log:\n{}",
        bounding_set(c),
        log()
    );

    const REQUESTS: u64 = 5;
    for _ in 0..REQUESTS {
        ureq::get(&format!("http://127.0.0.1:{server_port}/hello"))
            .call()
            .expect("GET /hello");
    }
    let counted = wait_for(Duration::from_secs(10), || {
        let n = scrape(&metrics_url)
            .server_counts("deploysvc")
            .get("GET /hello 200")
            .copied()?;
        (n == REQUESTS).then_some(n)
    });
    assert_eq!(
        counted,
        Some(REQUESTS),
        "the agent with capabilities {} did not count the service's requests; metrics:\n{}\nlog:\n{}",
        bounding_set(c),
        ureq::get(&metrics_url)
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("obs_agent") || l.contains("deploysvc"))
            .collect::<Vec<_>>()
            .join("\n"),
        log()
    );
    // Every shared program is attached too, the TCP-handshake one among them (it reads the
    // kernel's BTF from /sys/kernel/btf, which needs no capability).
    assert!(
        !log().contains("not watching TCP handshakes"),
        "with capabilities {}: {}",
        bounding_set(c),
        log()
    );
    assert_eq!(
        scrape(&metrics_url).sum("obs_agent_probes_attached", &[]),
        obs_integration_tests::shared_probes_under_test(),
        "{}",
        log()
    );
    drop(server);
}
