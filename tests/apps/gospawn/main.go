// gospawn: a goroutine-heavy benchmark target. GET /run?ms=M&work=W spawns short goroutines
// in a loop for M milliseconds (batches of 256, waited for), each doing W rounds of a small
// computation, and answers how many it spawned. It serves HTTP so that obs-agent watches it.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

var sink uint64

func work(rounds int, wg *sync.WaitGroup) {
	x := uint64(rounds)
	for i := 0; i < rounds; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	if x == 42 {
		sink++
	}
	wg.Done()
}

func run(d time.Duration, rounds int) int {
	deadline := time.Now().Add(d)
	spawned := 0
	var wg sync.WaitGroup
	for time.Now().Before(deadline) {
		wg.Add(256)
		for i := 0; i < 256; i++ {
			go work(rounds, &wg)
		}
		wg.Wait()
		spawned += 256
	}
	return spawned
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the chosen port here")
	flag.Parse()
	http.HandleFunc("/run", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		rounds, _ := strconv.Atoi(r.URL.Query().Get("work"))
		fmt.Fprintln(w, run(time.Duration(ms)*time.Millisecond, rounds))
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		panic(err)
	}
	if *portFile != "" {
		os.WriteFile(*portFile, []byte(strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), 0o644)
	}
	http.Serve(ln, nil)
}
