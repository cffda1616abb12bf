// gonohttp is a Go program without net/http: the agent must refuse it with a clear message.
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("running")
	time.Sleep(time.Hour)
}
