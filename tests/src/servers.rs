//! Servers in other languages than Go for the any-language tests: the Python, Node and Java
//! test apps (`tests/apps/pyserver`, `tests/apps/nodeserver`, `tests/apps/javaserver`) and
//! Debian's nginx, each on a loopback port of its own.

use std::{
    collections::HashMap,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, reported_port, served_at, tempdir, wait_for, workspace_root, Proc};

/// A test app in Python, Node or Java that reports its port in a file and counts what it serves.
pub struct ScriptServer {
    pub proc: Proc,
    pub port: u16,
}

/// The system's Python 3 (Debian's), not a user's shim.
pub fn python3() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_owned()
    } else {
        "python3".into()
    }
}

impl ScriptServer {
    /// `tests/apps/pyserver/server.py` (`extra`: e.g. `--http10`), as service `service`.
    pub fn python(service: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(python3());
        cmd.arg(workspace_root().join("tests/apps/pyserver/server.py"))
            .args(extra);
        Self::start(cmd, service)
    }

    /// `tests/apps/nodeserver/server.js`, as service `service`.
    pub fn node(service: &str) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(workspace_root().join("tests/apps/nodeserver/server.js"));
        Self::start(cmd, service)
    }

    /// `tests/apps/javaserver/Server.java` (the JDK's `com.sun.net.httpserver`, run by the
    /// single-file source launcher), as service `service`.
    pub fn java(service: &str) -> Self {
        let mut cmd = Command::new("java");
        cmd.arg(workspace_root().join("tests/apps/javaserver/Server.java"));
        Self::start(cmd, service)
    }

    fn start(mut cmd: Command, service: &str) -> Self {
        let port_file = tempdir().join("port");
        let shown = format!("{cmd:?}");
        let child = cmd
            .arg("--port-file")
            .arg(&port_file)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {shown}: {e}"));
        let proc = Proc { child };
        let port = reported_port(&port_file, &shown);
        Self { proc, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The server's own count of what it served: "METHOD ROUTE STATUS" -> n.
    pub fn served(&self) -> HashMap<String, u64> {
        served_at(&self.url("/_stats"))
    }
}

/// Debian's nginx in one process (`master_process off`, so the process that serves is the
/// one started), serving `root` with `sendfile` and proxying `/api/` to a backend over
/// kept-alive HTTP/1.1 connections (as nginx is usually set up in front of an application),
/// and `/short/` over nginx's default: one HTTP/1.0 connection per request.
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    pub root: PathBuf,
}

impl Nginx {
    pub fn start(backend_port: u16) -> Self {
        let dir = tempdir();
        let root = dir.join("www");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "master_process off;
daemon off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    types {{ text/html html; application/octet-stream bin; }}
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location /api/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
        location /short/ {{
            proxy_pass http://127.0.0.1:{backend_port}/;
        }}
    }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx (Debian nginx-light; cargo xtask test installs it)");
        let proc = Proc { child };
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .unwrap_or_else(|| {
            panic!(
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            )
        });
        Self { proc, port, root }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
