// goruntime: a Go program that reports its own runtime figures (runtime/metrics) and is
// driven through phases over HTTP, for comparing obs-agent's go_* metrics with the
// runtime's own. Figures are sampled by a long-lived goroutine after a request asks for it
// and the request's own goroutines are gone (send "Connection: close"), so that a sample is
// the quiescent state the agent reads too.
//
//	/spawn?n=N      start N goroutines (main.blocker) that wait for /release
//	/release        let them exit, wait until they have
//	/gc?n=N         run N forced GC cycles
//	/panic?n=N      panic and recover N times in main.explicitPanic
//	/indexpanic?n=N index out of range, recovered, N times, in main.indexPanic
//	/crash          die of an unrecovered panic in main.crash (100 ms later)
//	/churn?n=M      spawn short goroutines (main.churner) in a loop for M milliseconds
//	/sample         take a sample 300 ms from now; /stats returns the latest sample (JSON)
package main

import (
	"encoding/json"
	"flag"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

var (
	release   = make(chan struct{})
	releaseMu sync.Mutex
	blockers  sync.WaitGroup
	started   sync.WaitGroup
	recovered int64
	sink      []int
	lastStats atomic.Value
	sampleReq = make(chan struct{}, 1)
)

func blocker() {
	defer blockers.Done()
	releaseMu.Lock()
	ch := release
	releaseMu.Unlock()
	started.Done()
	<-ch
}

var churned sync.WaitGroup

func churner() {
	churned.Done()
}

//go:noinline
func explicitPanic() {
	panic("explicit")
}

//go:noinline
func indexPanic(i int) int {
	return sink[i]
}

//go:noinline
func crash() {
	panic("crash")
}

func recoverOne(f func()) {
	defer func() {
		if recover() != nil {
			atomic.AddInt64(&recovered, 1)
		}
	}()
	f()
}

func count(r *http.Request) int {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 {
		return 1
	}
	return n
}

func sample() map[string]interface{} {
	names := []string{"/sched/goroutines:goroutines", "/gc/cycles/total:gc-cycles", "/gc/pauses:seconds", "/gc/heap/goal:bytes", "/gc/heap/live:bytes", "/sched/goroutines-created:goroutines", "/gc/gogc:percent", "/gc/gomemlimit:bytes"}
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	out := map[string]interface{}{
		"num_goroutine":    runtime.NumGoroutine(),
		"recovered_panics": atomic.LoadInt64(&recovered),
		"go_version":       runtime.Version(),
	}
	for _, m := range s {
		switch m.Value.Kind() {
		case metrics.KindUint64:
			out[m.Name] = m.Value.Uint64()
		case metrics.KindFloat64Histogram:
			var total uint64
			for _, c := range m.Value.Float64Histogram().Counts {
				total += c
			}
			out[m.Name+"#count"] = total
		}
	}
	return out
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the chosen port here")
	flag.Parse()

	// The sampler lives as long as the process, so it is in every count alike.
	go func() {
		for range sampleReq {
			time.Sleep(300 * time.Millisecond)
			lastStats.Store(sample())
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/spawn", func(w http.ResponseWriter, r *http.Request) {
		n := count(r)
		blockers.Add(n)
		started.Add(n)
		for i := 0; i < n; i++ {
			go blocker()
		}
		// Every one has its channel before /release may replace it.
		started.Wait()
	})
	mux.HandleFunc("/release", func(w http.ResponseWriter, r *http.Request) {
		releaseMu.Lock()
		close(release)
		release = make(chan struct{})
		releaseMu.Unlock()
		blockers.Wait()
	})
	mux.HandleFunc("/churn", func(w http.ResponseWriter, r *http.Request) {
		deadline := time.Now().Add(time.Duration(count(r)) * time.Millisecond)
		for time.Now().Before(deadline) {
			churned.Add(100)
			for i := 0; i < 100; i++ {
				go churner()
			}
			churned.Wait()
		}
	})
	mux.HandleFunc("/gc", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < count(r); i++ {
			runtime.GC()
		}
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < count(r); i++ {
			recoverOne(explicitPanic)
		}
	})
	mux.HandleFunc("/indexpanic", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < count(r); i++ {
			recoverOne(func() { indexPanic(i + 5) })
		}
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		time.AfterFunc(100*time.Millisecond, crash)
	})
	mux.HandleFunc("/sample", func(w http.ResponseWriter, r *http.Request) {
		sampleReq <- struct{}{}
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(lastStats.Load())
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		panic(err)
	}
	if *portFile != "" {
		port := ln.Addr().(*net.TCPAddr).Port
		os.WriteFile(*portFile+".tmp", []byte(strconv.Itoa(port)), 0o644)
		os.Rename(*portFile+".tmp", *portFile)
	}
	http.Serve(ln, mux)
}
