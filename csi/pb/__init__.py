"""Generated CSI v1 stubs: run tools/gen-proto, do not edit."""
