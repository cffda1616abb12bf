//go:build go1.23

// Built without go.mod (GOPATH mode), the language version would select the Go 1.21 mux.
//go:debug httpmuxgo121=0

// gopatterns registers overlapping http.ServeMux patterns (more than eight top-level routes, so
// the mux's routing tree holds its children in a Go map) and counts every request by the
// pattern Go itself matched (r.Pattern), reported on GET /_stats as "METHOD ROUTE STATUS",
// ROUTE being the pattern's path part: the ground truth for the agent's http_route.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

var patterns = []string{
	"/",
	"/items/",
	"GET /items/{id}",
	"POST /items/{id}",
	"GET /items/special",
	"GET /items/{id}/parts/{part}",
	"/files/{path...}",
	"/exact/{$}",
	"DELETE /admin/users/{name}",
	"/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i/", "/j/{x}",
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the bound port here once listening")
	flag.Parse()

	var mu sync.Mutex
	counts := map[string]int{}
	mux := http.NewServeMux()
	for _, p := range patterns {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			route := r.Pattern
			if i := strings.IndexByte(route, ' '); i >= 0 {
				route = route[i+1:]
			}
			mu.Lock()
			counts[fmt.Sprintf("%s %s 200", r.Method, route)]++
			mu.Unlock()
			w.Write([]byte("ok"))
		})
	}
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(counts)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		os.WriteFile(*portFile+".tmp", []byte(strconv.Itoa(port)), 0o644)
		os.Rename(*portFile+".tmp", *portFile)
	}
	http.Serve(ln, mux)
}
