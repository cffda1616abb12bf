//go:build go1.22

package main

import (
	"io"
	"net/http"
)

func registerPatternRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v2/items/{id}", counted("/v2/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.PathValue("id"))
	}))
}
