// gohello is the benchmark's hello-world net/http server. With -work-us N, each request
// first keeps its goroutine busy for N microseconds (a stand-in for a handler's own work).
package main

import (
	"flag"
	"io"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	workUs := flag.Int("work-us", 0, "microseconds of CPU work per request")
	flag.Parse()
	work := time.Duration(*workUs) * time.Microsecond
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if work > 0 {
			for start := time.Now(); time.Since(start) < work; {
			}
		}
		io.WriteString(w, "hello world\n")
	})
	http.ListenAndServe(*addr, nil)
}
