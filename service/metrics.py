"""Prometheus metrics, defined once, few labels."""

from prometheus_client import Counter, Histogram

CACHE = Counter("neumeta_cache_requests_total", "Model cache lookups", ["result"])
STAGE = Histogram("neumeta_synthesis_stage_seconds", "Time per synthesis stage", ["stage"])
