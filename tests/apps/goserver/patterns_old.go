//go:build !go1.22

package main

import "net/http"

func registerPatternRoutes(mux *http.ServeMux) {}
