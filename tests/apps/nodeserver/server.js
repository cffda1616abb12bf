// A Node http server with known routes and statuses, counting what it served (the same
// routes as tests/apps/pyserver/server.py).
// Usage: node server.js --port-file FILE

"use strict";
const fs = require("fs");
const http = require("http");

const counts = {};
function count(req, route, status) {
  const key = `${req.method} ${route} ${status}`;
  counts[key] = (counts[key] || 0) + 1;
}

function reply(req, res, route, status, body) {
  res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(req.method === "HEAD" ? undefined : body);
  count(req, route, status);
}

function handle(req, res, body) {
  const url = new URL(req.url, "http://x");
  const path = url.pathname;
  const m = req.method;
  if (path === "/_stats" && m === "GET") {
    res.end(JSON.stringify(counts));
    return;
  }
  if (path === "/hello" && (m === "GET" || m === "HEAD")) return reply(req, res, "/hello", 200, "hello\n");
  if (/^\/items\/\d+$/.test(path)) {
    if (m === "GET") return reply(req, res, "/items/{id}", 200, '{"id": 1}');
    if (m === "PUT") return reply(req, res, "/items/{id}", 201, "stored");
    if (m === "DELETE") return reply(req, res, "/items/{id}", 404, "no such item");
  }
  if (path === "/create" && m === "POST") return reply(req, res, "/create", 201, `created ${body.length}`);
  if (path === "/fail" && m === "GET") return reply(req, res, "/fail", 500, "failed");
  if (path === "/big" && m === "GET") {
    const kb = Number(url.searchParams.get("kb") || "1");
    return reply(req, res, "/big", 200, "x".repeat(kb * 1024));
  }
  if (path === "/slow" && m === "GET") {
    setTimeout(() => reply(req, res, "/slow", 200, "slow"), Number(url.searchParams.get("ms") || "100"));
    return;
  }
  if (path === "/chunked" && m === "GET") {
    // No Content-Length: Node sends the body chunked, one write per chunk, with pauses.
    res.writeHead(200, { "Content-Type": "text/plain" });
    let i = 0;
    const n = Number(url.searchParams.get("n") || "5");
    const next = () => {
      if (i === n) {
        res.end();
        count(req, "/chunked", 200);
        return;
      }
      res.write(`chunk ${i++}\n`.repeat(100));
      setTimeout(next, 2);
    };
    next();
    return;
  }
  if (path === "/crash") process.exit(3);
  reply(req, res, path, 404, "not found");
}

const server = http.createServer((req, res) => {
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => handle(req, res, Buffer.concat(parts)));
});
const args = process.argv.slice(2);
const portFile = args[args.indexOf("--port-file") + 1];
server.listen(0, "127.0.0.1", () => {
  fs.writeFileSync(portFile + ".tmp", String(server.address().port));
  fs.renameSync(portFile + ".tmp", portFile);
});
