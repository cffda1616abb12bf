// gomodule is an HTTP server built in module mode with one (locally replaced) dependency:
// its build info carries a main module and a dep, as most real Go services' do.
package main

import (
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"

	"example.com/greeting"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	portFile := flag.String("port-file", "", "write the chosen port here")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		panic(err)
	}
	if *portFile != "" {
		port := ln.Addr().(*net.TCPAddr).Port
		tmp := *portFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(port)), 0o644); err != nil {
			panic(err)
		}
		if err := os.Rename(tmp, *portFile); err != nil {
			panic(err)
		}
	}
	http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, greeting.Hello())
	})
	panic(http.Serve(ln, nil))
}
