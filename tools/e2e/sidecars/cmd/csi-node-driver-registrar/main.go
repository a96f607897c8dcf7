// A stand-in for kubernetes-csi/node-driver-registrar with the flags the chart passes: it serves
// the kubelet plugin-registration API on <registration dir>/<driver>-reg.sock, answering GetInfo
// with the driver's name (from GetPluginInfo) and the socket path the kubelet must dial, and
// /healthz while that socket exists. The upstream module cannot be fetched through the Go module
// proxy these machines reach, so the e2e cluster builds this one instead.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"btrfs-csi.e2e/sidecars/internal/csiconn"
)

var version = "unknown"

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driverName, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		// Like upstream: exit so the container restarts and registration is retried.
		log.Fatalf("kubelet refused the registration of %s: %s", r.driverName, s.Error)
	}
	log.Printf("kubelet registered %s at %s", r.driverName, r.endpoint)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket inside this container")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's socket as the kubelet sees it")
	httpEndpoint := flag.String("http-endpoint", "", "address of /healthz, e.g. :9809")
	registrationDir := flag.String("plugin-registration-path", "/registration", "kubelet plugins_registry directory")
	flag.Int("v", 0, "log verbosity (accepted for compatibility)")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	log.Printf("csi-node-driver-registrar (btrfs-csi e2e stand-in) %s", version)

	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	name, err := csiconn.DriverName(ctx, conn)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	conn.Close()

	socket := filepath.Join(*registrationDir, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, &registrar{driverName: name, endpoint: *kubeletPath})

	if *httpEndpoint != "" {
		http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if _, err := os.Stat(socket); err != nil {
				http.Error(w, fmt.Sprintf("registration socket: %v", err), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		go func() { log.Fatal(http.ListenAndServe(*httpEndpoint, nil)) }()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Stop()
		os.Remove(socket)
		os.Exit(0)
	}()
	log.Printf("serving plugin registration for %s on %s", name, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
