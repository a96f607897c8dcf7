// Package csiconn dials a CSI driver's unix socket and asks its Identity service.
package csiconn

import (
	"context"
	"fmt"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to a socket given as a path or a unix:// URL (the sidecars' --csi-address).
func Dial(address string) (*grpc.ClientConn, error) {
	target := "unix://" + strings.TrimPrefix(address, "unix://")
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// DriverName asks GetPluginInfo, retrying until the driver answers or ctx ends: the driver
// container may start after its sidecars.
func DriverName(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	identity := csi.NewIdentityClient(conn)
	for {
		info, err := identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		if err == nil {
			if info.GetName() == "" {
				return "", fmt.Errorf("GetPluginInfo returned an empty name")
			}
			return info.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GetPluginInfo: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// Probe calls the driver's Probe; a driver that answers ready=false is not healthy.
func Probe(ctx context.Context, conn *grpc.ClientConn) error {
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	if ready := resp.GetReady(); ready != nil && !ready.GetValue() {
		return fmt.Errorf("driver reports not ready")
	}
	return nil
}
