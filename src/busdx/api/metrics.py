"""Prometheus metrics at ``/metrics``: requests, their latency, errors, and analyses by call.

Each app has its own registry (no process-wide state), so two apps in one process (tests) count
apart. Routes are labelled by their template (``/api/analyze``), never by what a client put in
the path, so the number of series stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNMATCHED = "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("busdx_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "busdx_request_seconds", "Time to answer a request", ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry)
        self.errors = Counter("busdx_errors", "Requests answered with a 5xx status",
                              ["route"], registry=self.registry)
        self.analyses = Counter("busdx_analyses", "Analyses made, by call",
                                ["call"], registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request (the page's files too, under their route)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or (
                "static" if not scope.get("path", "").startswith("/api/") else UNMATCHED)
            self.metrics.requests.labels(scope["method"], name, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
            if status["code"] >= 500:
                self.metrics.errors.labels(name).inc()
