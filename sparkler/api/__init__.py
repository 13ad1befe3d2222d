"""Firecracker-compatible REST API: server (h11 shell), router (pure), faults, bodies, openapi.yaml."""
