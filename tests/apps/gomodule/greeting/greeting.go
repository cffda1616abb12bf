// Package greeting is a dependency of gomodule, so that its build info lists one.
package greeting

// Hello is what gomodule answers.
func Hello() string { return "hello from a module\n" }
