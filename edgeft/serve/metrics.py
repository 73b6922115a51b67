"""The server's Prometheus metrics (``GET /metrics``, text exposition format), one registry per app.

prometheus_client is the reference Python client: histograms with cumulative buckets, counters with
``_total``/``_created`` series and the exposition format every scraper reads, none of it to hand-write.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    def __init__(self, model_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeft_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("edgeft_errors", "Requests that failed, by endpoint and kind (bad_request, "
                              "queue_full, timeout, internal).", ["endpoint", "kind"], registry=r)
        self.latency = Histogram("edgeft_request_latency_seconds", "Time from arrival to the last byte of the "
                                 "answer, by endpoint (queue wait included).", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.queue_wait = Histogram("edgeft_queue_wait_seconds", "Time a request waited for a free worker.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edgeft_time_to_first_token_seconds", "Prefill + first token, causal LMs.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tok_s = Histogram("edgeft_decode_tokens_per_second", "Decode speed of each completion (tokens after "
                               "the first / their time).", buckets=RATE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("edgeft_prompt_tokens", "Prompt / input tokens processed.", registry=r)
        self.completion_tokens = Counter("edgeft_completion_tokens", "Tokens generated.", registry=r)
        self.queue_depth = Gauge("edgeft_queue_depth", "Requests waiting for a worker.", registry=r)
        self.in_flight = Gauge("edgeft_in_flight", "Requests being computed.", registry=r)
        self.info = Gauge("edgeft_model_info", "The artifact served (value 1).", ["model", "manifest_sha256"],
                          registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
