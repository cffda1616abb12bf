// gochain is one link of a chain of services for the trace tests. GET /work serves a request:
// with -downstream set, it first calls the downstream's /work once per entry of -calls
// (comma-separated query strings, e.g. "a=1,fail=1,sleep=30"), each from its own goroutine,
// and answers 200 with the statuses it got; without, it is a leaf: "fail=1" answers 500,
// "sleep=N" sleeps N ms first. With -nested, each downstream call is made from a goroutine
// started by the goroutine the handler started. With -background, a goroutine started by
// main calls the downstream every 5 ms, outside any request.
package main

import (
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

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the bound port here once listening")
	downstream := flag.String("downstream", "", "base URL of the next service")
	calls := flag.String("calls", "", "query strings of the downstream calls, comma-separated")
	nested := flag.Bool("nested", false, "make each call from a grandchild goroutine of the handler")
	background := flag.Bool("background", false, "also call the downstream every 5 ms outside requests")
	flag.Parse()

	client := &http.Client{}
	if *background && *downstream != "" {
		go func() {
			for {
				if resp, err := client.Get(*downstream + "/work?background=1"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	http.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		// The service's own view of how long it worked on the request, for the test to
		// compare the agent's spans with.
		start := time.Now()
		timing := func() {
			w.Header().Set("Server-Timing", fmt.Sprintf("handler;dur=%.3f", float64(time.Since(start).Microseconds())/1000))
		}
		q := r.URL.Query()
		if ms, err := strconv.Atoi(q.Get("sleep")); err == nil {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		if q.Get("fail") == "1" {
			timing()
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
			return
		}
		if *downstream == "" {
			timing()
			io.WriteString(w, "leaf\n")
			return
		}
		queries := strings.Split(*calls, ",")
		statuses := make([]string, len(queries))
		var wg sync.WaitGroup
		for i, query := range queries {
			wg.Add(1)
			call := func(i int, query string) {
				defer wg.Done()
				resp, err := client.Get(*downstream + "/work?" + query)
				if err != nil {
					statuses[i] = err.Error()
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = strconv.Itoa(resp.StatusCode)
			}
			if *nested {
				go func(i int, query string) { go call(i, query) }(i, query)
			} else {
				go call(i, query)
			}
		}
		wg.Wait()
		timing()
		fmt.Fprintln(w, strings.Join(statuses, " "))
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *portFile != "" {
		tmp := *portFile + ".tmp"
		os.WriteFile(tmp, []byte(strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), 0o644)
		os.Rename(tmp, *portFile)
	}
	http.Serve(ln, nil)
}
