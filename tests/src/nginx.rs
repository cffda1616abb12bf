//! Debian's nginx as a test server: files by sendfile and a proxy to a backend.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, tempdir, wait_for, Proc};

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
