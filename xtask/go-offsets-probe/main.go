// go-offsets-probe is built by `cargo xtask go-offsets` with every supported Go release, so
// that the agent can read from its DWARF the offsets of the struct fields it needs (net/http's
// ServeMux routing tree and the runtime's maps, goroutines, and net/http's transport). It only
// has to link those types (hence the client call); it runs only when asked to (-addr, -get).
package main

import (
	"flag"
	"io"
	"net/http"
)

func main() {
	addr := flag.String("addr", "", "serve on this address (the probe only needs to be built)")
	get := flag.String("get", "", "fetch this URL first")
	flag.Parse()
	if *get != "" {
		if resp, err := http.Get(*get); err == nil {
			resp.Body.Close()
		}
	}

	mux := http.NewServeMux()
	// Plain paths are valid patterns in every Go release; enough of them that a routing node
	// keeps its children in a map, not a slice (Go 1.22+).
	for _, path := range []string{"/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i", "/j", "/items/"} {
		route := path
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, route)
		})
	}
	if *addr != "" {
		http.ListenAndServe(*addr, mux)
	}
}
