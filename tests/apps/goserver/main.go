// goserver is the Go net/http server the integration tests and the benchmark watch.
// It counts what it serves, by method, route and status, and reports those counts on
// GET /_stats so tests can compare the agent's figures with the service's own.
//
// Routes:
//   /hello              200, body "hello"
//   /items/<id>         GET 200, PUT 201, DELETE 404 (ids in the path)
//   /create             POST 201
//   /missing            404 via http.NotFound
//   /fail               500
//   /implicit           writes a body without calling WriteHeader (implicit 200)
//   /empty              returns without writing anything (implicit 200)
//   /slow?ms=N          sleeps N milliseconds, then 200
//   /v2/items/{name}    Go 1.22+ ServeMux pattern route (only when built with go1.22+)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = 200
	}
	return s.ResponseWriter.Write(b)
}

type stats struct {
	mu     sync.Mutex
	counts map[string]int
}

func (s *stats) add(key string) {
	s.mu.Lock()
	s.counts[key]++
	s.mu.Unlock()
}

var served = &stats{counts: map[string]int{}}

// counted wraps a handler so that every request it serves is recorded as
// "METHOD ROUTE STATUS", the same triple the agent labels its metrics with.
func counted(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h(rec, r)
		if rec.status == 0 {
			rec.status = 200
		}
		served.add(fmt.Sprintf("%s %s %d", r.Method, route, rec.status))
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the bound port here once listening")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", counted("/hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	mux.HandleFunc("/items/", counted("/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusCreated)
		case http.MethodDelete:
			w.WriteHeader(http.StatusNotFound)
		default:
			io.WriteString(w, strings.TrimPrefix(r.URL.Path, "/items/"))
		}
	}))
	mux.HandleFunc("/create", counted("/create", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "created")
	}))
	mux.HandleFunc("/missing", counted("/missing", func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	}))
	mux.HandleFunc("/fail", counted("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	mux.HandleFunc("/implicit", counted("/implicit", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("implicit ok"))
	}))
	mux.HandleFunc("/empty", counted("/empty", func(w http.ResponseWriter, r *http.Request) {}))
	mux.HandleFunc("/slow", counted("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		io.WriteString(w, "slow")
	}))
	registerPatternRoutes(mux)
	mux.HandleFunc("/_stats", func(w http.ResponseWriter, r *http.Request) {
		served.mu.Lock()
		defer served.mu.Unlock()
		json.NewEncoder(w).Encode(served.counts)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		tmp := *portFile + ".tmp"
		os.WriteFile(tmp, []byte(strconv.Itoa(port)), 0o644)
		os.Rename(tmp, *portFile)
	}
	fmt.Printf("listening on %d\n", port)
	http.Serve(ln, mux)
}
