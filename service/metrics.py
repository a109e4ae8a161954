"""Prometheus metrics, defined once, few labels; no label ever holds a ratio, width or digest."""

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created samples only add noise to every scrape

REQUESTS = Histogram(
    "neumeta_http_request_duration_seconds", "HTTP requests by route template", ["route", "method", "status_class"]
)
STAGE = Histogram("neumeta_synthesis_stage_seconds", "Time per synthesis stage", ["stage"])
SYNTHESES = Counter("neumeta_syntheses_total", "Syntheses performed by this process")
CACHE = Counter("neumeta_cache_lookups_total", "Model cache lookups", ["tier", "result"])
JOINS = Counter("neumeta_singleflight_joins_total", "Requests that joined a synthesis already under way")
REMOTE_WAITS = Counter("neumeta_lock_waits_total", "Waits for another replica's synthesis", ["result"])
QUEUE = Gauge("neumeta_synthesis_queue_depth", "Syntheses waiting for the worker")
IN_FLIGHT = Gauge("neumeta_syntheses_in_flight", "Syntheses running on the worker")
BYTES = Counter("neumeta_bytes_served_total", "Model bytes sent to clients")
REDIS_ERRORS = Counter("neumeta_redis_errors_total", "Failed or skipped Redis operations", ["op"])
REJECTED = Counter("neumeta_rejected_total", "Requests refused before synthesis", ["reason"])
