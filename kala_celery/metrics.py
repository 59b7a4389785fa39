"""Kept for `from kala_celery.metrics import KalaCollector`: the collector is api/metrics.py."""

from kala_celery.api.metrics import KalaCollector, registry_for, render

__all__ = ["KalaCollector", "registry_for", "render"]
