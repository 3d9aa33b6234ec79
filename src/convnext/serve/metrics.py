"""Prometheus metrics of one server (its own registry, so two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/", "/healthz", "/v1/model", "/v1/predict", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

__all__ = ["CONTENT_TYPE", "ServeMetrics"]


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "convnext_serve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "convnext_serve_request_latency_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "convnext_serve_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "convnext_serve_forward_seconds",
            "Time of one batched forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "convnext_serve_queue_depth", "Preprocessed images waiting for a forward pass", registry=r
        )
        self.in_flight = Gauge("convnext_serve_in_flight", "Prediction requests being served", registry=r)
        self.model_loaded = Gauge("convnext_serve_model_loaded", "1 once the model is loaded", registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS or path.startswith("/static/") else "other"
        if endpoint.startswith("/static/"):
            endpoint = "/static"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
