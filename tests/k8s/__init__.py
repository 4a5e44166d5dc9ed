"""Kubernetes fixtures and the test-side stand-ins for helm, the API server and its client."""
