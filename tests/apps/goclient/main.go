// goclient makes HTTP calls with net/http's Client when told to, and reports what it got
// back: the ground truth for the agent's client-side metrics. GET /run?target=URL&n=N makes
// N rounds of calls to target (GET /hello 200, GET /fail 500, POST /create 201, GET /missing
// 404, a GET with a long URL 200) from 4 goroutines, on keep-alive and fresh connections,
// and answers {"METHOD STATUS HOST:PORT": count}.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
)

type call struct {
	method, path string
}

var plan = []call{
	{"GET", "/hello"},
	{"GET", "/fail"},
	{"POST", "/create"},
	{"GET", "/missing"},
	{"GET", "/hello?pad=" + strings.Repeat("x", 120)},
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address of the control endpoint")
	portFile := flag.String("port-file", "", "write the bound port here once listening")
	flag.Parse()

	keepAlive := &http.Client{}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	http.HandleFunc("/run", func(w http.ResponseWriter, r *http.Request) {
		target, err := url.Parse(r.URL.Query().Get("target"))
		n, err2 := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || err2 != nil {
			http.Error(w, "bad target or n", http.StatusBadRequest)
			return
		}
		var mu sync.Mutex
		counts := map[string]int{}
		var failures []string
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				client := keepAlive
				if g%2 == 1 {
					client = fresh
				}
				for i := g; i < n; i += 4 {
					for _, c := range plan {
						req, _ := http.NewRequest(c.method, target.String()+c.path, nil)
						resp, err := client.Do(req)
						mu.Lock()
						if err != nil {
							failures = append(failures, err.Error())
						} else {
							counts[fmt.Sprintf("%s %d %s", c.method, resp.StatusCode, target.Host)]++
						}
						mu.Unlock()
						if err == nil {
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
				}
			}(g)
		}
		wg.Wait()
		if len(failures) > 0 {
			http.Error(w, strings.Join(failures, "\n"), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(counts)
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
