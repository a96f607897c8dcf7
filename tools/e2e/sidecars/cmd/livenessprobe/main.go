// A stand-in for kubernetes-csi/livenessprobe with the flags the chart passes: GET /healthz on
// --health-port calls the driver's Probe over its socket and answers 200 only when it succeeds.
// The upstream module cannot be fetched through the Go module proxy these machines reach.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"btrfs-csi.e2e/sidecars/internal/csiconn"
)

var version = "unknown"

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket inside this container")
	healthPort := flag.Int("health-port", 9808, "TCP port of /healthz")
	probeTimeout := flag.Duration("probe-timeout", time.Second, "timeout of one Probe call")
	flag.Int("v", 0, "log verbosity (accepted for compatibility)")
	flag.Parse()
	log.Printf("livenessprobe (btrfs-csi e2e stand-in) %s", version)

	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *probeTimeout)
		defer cancel()
		if err := csiconn.Probe(ctx, conn); err != nil {
			log.Printf("health check failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Fatal(http.ListenAndServe(fmt.Sprintf(":%d", *healthPort), nil))
}
