// A Java server on the JDK's own com.sun.net.httpserver, with the routes and statuses of
// tests/apps/pyserver/server.py, counting what it served.
// Usage: java Server.java --port-file FILE   (the JDK's single-file source launcher)

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;

public class Server {
    static final Map<String, Long> COUNTS = new ConcurrentHashMap<>();

    static void count(HttpExchange ex, String route, int status) {
        COUNTS.merge(ex.getRequestMethod() + " " + route + " " + status, 1L, Long::sum);
    }

    static void reply(HttpExchange ex, String route, int status, byte[] body) throws IOException {
        boolean head = ex.getRequestMethod().equals("HEAD");
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        if (head) {
            ex.getResponseHeaders().set("Content-Length", Integer.toString(body.length));
        }
        // -1: no body (HEAD); else a fixed Content-Length (0 would mean chunked).
        ex.sendResponseHeaders(status, head ? -1 : (body.length == 0 ? -1 : body.length));
        count(ex, route, status);
        try (OutputStream out = ex.getResponseBody()) {
            if (!head) {
                out.write(body);
            }
        }
    }

    static String query(HttpExchange ex, String name, String fallback) {
        String q = ex.getRequestURI().getRawQuery();
        if (q != null) {
            for (String kv : q.split("&")) {
                String[] p = kv.split("=", 2);
                if (p.length == 2 && p[0].equals(name)) {
                    return p[1];
                }
            }
        }
        return fallback;
    }

    static void handle(HttpExchange ex) throws IOException {
        String path = ex.getRequestURI().getPath();
        String m = ex.getRequestMethod();
        ex.getRequestBody().readAllBytes();
        if (path.equals("/_stats") && m.equals("GET")) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<String, Long> e : COUNTS.entrySet()) {
                if (b.length() > 1) {
                    b.append(',');
                }
                b.append('"').append(e.getKey()).append("\":").append(e.getValue());
            }
            byte[] body = b.append('}').toString().getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(body);
            }
            return;
        }
        if (path.equals("/hello") && (m.equals("GET") || m.equals("HEAD"))) {
            reply(ex, "/hello", 200, "hello\n".getBytes());
        } else if (path.matches("/items/[0-9]+") && m.equals("GET")) {
            reply(ex, "/items/{id}", 200, "{\"id\": 1}".getBytes());
        } else if (path.matches("/items/[0-9]+") && m.equals("PUT")) {
            reply(ex, "/items/{id}", 201, "stored".getBytes());
        } else if (path.matches("/items/[0-9]+") && m.equals("DELETE")) {
            reply(ex, "/items/{id}", 404, "no such item".getBytes());
        } else if (path.equals("/create") && m.equals("POST")) {
            reply(ex, "/create", 201, "created".getBytes());
        } else if (path.equals("/fail") && m.equals("GET")) {
            reply(ex, "/fail", 500, "failed".getBytes());
        } else if (path.equals("/big") && m.equals("GET")) {
            int kb = Integer.parseInt(query(ex, "kb", "1"));
            reply(ex, "/big", 200, "x".repeat(kb * 1024).getBytes());
        } else if (path.equals("/slow") && m.equals("GET")) {
            try {
                Thread.sleep(Long.parseLong(query(ex, "ms", "100")));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            reply(ex, "/slow", 200, "slow".getBytes());
        } else if (path.equals("/chunked") && m.equals("GET")) {
            // Length 0: the JDK sends the body chunked, one chunk per flushed write.
            ex.getResponseHeaders().set("Content-Type", "text/plain");
            ex.sendResponseHeaders(200, 0);
            int n = Integer.parseInt(query(ex, "n", "5"));
            try (OutputStream out = ex.getResponseBody()) {
                for (int i = 0; i < n; i++) {
                    out.write(("chunk " + i + "\n").repeat(100).getBytes());
                    out.flush();
                    Thread.sleep(2);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            count(ex, "/chunked", 200);
        } else if (path.equals("/crash")) {
            Runtime.getRuntime().halt(3);
        } else {
            reply(ex, path, 404, "not found".getBytes());
        }
    }

    public static void main(String[] args) throws Exception {
        String portFile = null;
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("--port-file")) {
                portFile = args[i + 1];
            }
        }
        HttpServer server =
                HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 128);
        server.createContext("/", ex -> {
            try {
                handle(ex);
            } finally {
                ex.close();
            }
        });
        server.setExecutor(Executors.newCachedThreadPool());
        server.start();
        Path tmp = Path.of(portFile + ".tmp");
        Files.writeString(tmp, Integer.toString(server.getAddress().getPort()));
        Files.move(tmp, Path.of(portFile), StandardCopyOption.ATOMIC_MOVE);
    }
}
