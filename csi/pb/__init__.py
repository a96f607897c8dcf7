"""Generated stubs (CSI v1, the peer service): run tools/gen-proto, do not edit."""
