// hostpath-standin serves CreateVolume and CreateSnapshot the way csi-driver-host-path does them, for
// the bench when the reference driver itself cannot be built here (the module proxy refuses it). The
// work per call follows the reference's: one global mutex held for the whole call, a linear search of
// the state by name, a directory per volume (mode 0777), the whole state rewritten as JSON into one
// file after every change (os.WriteFile: no fsync, nothing committed), a snapshot archived with
// `tar czf <statedir>/<id>.snap -C <volume> .`. No quota, no capacity accounting, no node service.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type volume struct {
	VolName string
	VolID   string
	VolSize int64
	VolPath string
}

type snapshot struct {
	Name         string
	ID           string
	VolID        string
	Path         string
	CreationTime time.Time
	SizeBytes    int64
}

type resources struct {
	Volumes   []volume
	Snapshots []snapshot
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	name     string
	stateDir string
	mutex    sync.Mutex
	state    resources
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// dump rewrites the whole state file, as the reference does after every change.
func (d *driver) dump() error {
	data, err := json.Marshal(&d.state)
	if err != nil {
		return status.Errorf(codes.Internal, "encoding state: %v", err)
	}
	if err := os.WriteFile(filepath.Join(d.stateDir, "state.json"), data, 0o600); err != nil {
		return status.Errorf(codes.Internal, "writing state file: %v", err)
	}
	return nil
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: "standin"}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "Name missing in request")
	}
	if req.GetVolumeCapabilities() == nil {
		return nil, status.Error(codes.InvalidArgument, "Volume Capabilities missing in request")
	}
	capacity := req.GetCapacityRange().GetRequiredBytes()
	if capacity < 0 {
		return nil, status.Error(codes.InvalidArgument, "cannot have negative capacity")
	}
	d.mutex.Lock()
	defer d.mutex.Unlock()
	for _, v := range d.state.Volumes {
		if v.VolName == req.GetName() {
			if v.VolSize < capacity {
				return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with a different size", v.VolName)
			}
			return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: v.VolID, CapacityBytes: v.VolSize}}, nil
		}
	}
	id := newID()
	path := filepath.Join(d.stateDir, id)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, status.Errorf(codes.Internal, "creating volume directory: %v", err)
	}
	d.state.Volumes = append(d.state.Volumes, volume{req.GetName(), id, capacity, path})
	if err := d.dump(); err != nil {
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId: id, CapacityBytes: capacity, VolumeContext: req.GetParameters()}}, nil
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "Name missing in request")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "SourceVolumeId missing in request")
	}
	d.mutex.Lock()
	defer d.mutex.Unlock()
	for _, s := range d.state.Snapshots {
		if s.Name == req.GetName() {
			if s.VolID != req.GetSourceVolumeId() {
				return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", s.Name)
			}
			return &csi.CreateSnapshotResponse{Snapshot: answer(s)}, nil
		}
	}
	var source *volume
	for i := range d.state.Volumes {
		if d.state.Volumes[i].VolID == req.GetSourceVolumeId() {
			source = &d.state.Volumes[i]
		}
	}
	if source == nil {
		return nil, status.Errorf(codes.NotFound, "volume id %s does not exist", req.GetSourceVolumeId())
	}
	id := newID()
	file := filepath.Join(d.stateDir, id+".snap")
	if out, err := exec.Command("tar", "czf", file, "-C", source.VolPath, ".").CombinedOutput(); err != nil {
		return nil, status.Errorf(codes.Internal, "archiving %s: %v: %s", source.VolPath, err, out)
	}
	s := snapshot{req.GetName(), id, source.VolID, file, time.Now(), source.VolSize}
	d.state.Snapshots = append(d.state.Snapshots, s)
	if err := d.dump(); err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: answer(s)}, nil
}

func answer(s snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.VolID, SizeBytes: s.SizeBytes,
		CreationTime: timestamppb.New(s.CreationTime), ReadyToUse: true}
}

func main() {
	endpoint := flag.String("endpoint", "unix://tmp/csi.sock", "CSI endpoint")
	name := flag.String("drivername", "hostpath.csi.k8s.io", "name of the driver")
	flag.String("nodeid", "", "node id (accepted for the reference's command line; unused)")
	stateDir := flag.String("statedir", "/csi-data-dir", "directory of the volumes, snapshots and state file")
	flag.Parse()
	socket := strings.TrimPrefix(*endpoint, "unix://")
	if err := os.MkdirAll(*stateDir, 0o750); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d := &driver{name: *name, stateDir: *stateDir}
	server := grpc.NewServer()
	csi.RegisterIdentityServer(server, d)
	csi.RegisterControllerServer(server, d)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		server.GracefulStop()
	}()
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
