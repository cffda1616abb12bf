// gohello is the benchmark's hello-world net/http server.
package main

import (
	"flag"
	"io"
	"net/http"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello world\n")
	})
	http.ListenAndServe(*addr, nil)
}
