"""A Python http.server with known routes and statuses, counting what it served.

Routes (the "route" is what the agent should report: ids collapsed):
  GET /hello -> 200, HEAD /hello -> 200 (no body)
  GET /items/N -> 200, PUT /items/N -> 201 (reads its body), DELETE /items/N -> 404
  POST /create -> 201 (reads its body; answers 100 Continue first when asked)
  GET /fail -> 500, GET /big?kb=N -> 200 with N KiB, GET /chunked -> 200 chunked (HTTP/1.1)
  GET /slow?ms=N -> 200 after N ms, GET /crash -> the process exits mid-request
  anything else -> 404 (route: the path)
  GET /_stats -> JSON {"METHOD ROUTE STATUS": n} of everything else served (not counted)

Usage: server.py --port-file FILE [--http10] [--ipv6]  (--ipv6: listen on ::1)
"""

import http.server
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse

COUNTS = {}
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def count(self, route, status):
        with LOCK:
            key = f"{self.command} {route} {status}"
            COUNTS[key] = COUNTS.get(key, 0) + 1

    def reply(self, route, status, body=b"", content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # Counted once the status line is out (what the agent sees), before the body, so a
        # client never has its answer before the count.
        self.count(route, status)
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        m = self.command
        if path == "/_stats" and m == "GET":
            with LOCK:
                body = json.dumps(COUNTS).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/hello" and m in ("GET", "HEAD"):
            return self.reply("/hello", 200, b"hello\n")
        if re.fullmatch(r"/items/\d+", path):
            if m == "GET":
                return self.reply("/items/{id}", 200, b'{"id": 1}', "application/json")
            if m == "PUT":
                self.read_body()
                return self.reply("/items/{id}", 201, b"stored")
            if m == "DELETE":
                return self.reply("/items/{id}", 404, b"no such item")
        if path == "/create" and m == "POST":
            self.read_body()
            return self.reply("/create", 201, b"created")
        if path == "/fail" and m == "GET":
            return self.reply("/fail", 500, b"failed")
        if path == "/big" and m == "GET":
            kb = int(query.get("kb", ["1"])[0])
            return self.reply("/big", 200, b"x" * (kb * 1024))
        if path == "/slow" and m == "GET":
            time.sleep(int(query.get("ms", ["100"])[0]) / 1000)
            return self.reply("/slow", 200, b"slow")
        if path == "/chunked" and m == "GET":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.count("/chunked", 200)
            for i in range(int(query.get("n", ["5"])[0])):
                chunk = f"chunk {i}\n".encode() * 100
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/crash":
            os._exit(3)
        self.read_body()
        self.reply(path, 404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = route


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Clients that reset their connection (the tests do, on purpose) are not news.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    args = sys.argv[1:]
    port_file = args[args.index("--port-file") + 1]
    if "--http10" in args:
        Handler.protocol_version = "HTTP/1.0"
    if "--ipv6" in args:
        Server.address_family = socket.AF_INET6
        server = Server(("::1", 0), Handler)
    else:
        server = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
