//go:build go1.22

// Built without go.mod (GOPATH mode), the language version would select the Go 1.21 mux.
//go:debug httpmuxgo121=0

package main

import (
	"io"
	"net/http"
)

func registerPatternRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v2/items/{name}", counted("/v2/items/{name}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.PathValue("name"))
	}))
}
