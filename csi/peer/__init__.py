"""The peer channel between the node plugins of one installation: mutual TLS, a narrow read-only API."""
