"""Prometheus metrics of the service, aggregated over all worker processes (prometheus-client multiprocess mode).

Every worker writes its samples to memory-mapped files in ``<state dir>/metrics``; ``GET /metrics``
on any worker reads them all. The metrics of one process are created once (the multiprocess value
class is process-wide); names:

    finetune_policy_decisions_total{verdict, rule}          decisions answered (verdict: method or infeasible)
    finetune_policy_decision_seconds                         in-process decision time (histogram)
    finetune_policy_audit_append_seconds                     audit append until committed (histogram)
    finetune_policy_http_requests_total{method, route, status}
    finetune_policy_http_request_seconds{route}              request time, first byte in to last byte out
    finetune_policy_errors_total{code}                       error answers by error code (4xx and 5xx)
    finetune_policy_policy_reloads_total{outcome}            reloads: reloaded, unchanged, invalid
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Metrics:
    """The metric objects and the folder their samples live in."""

    directory: str
    decisions: Any
    decision_seconds: Any
    audit_seconds: Any
    requests: Any
    request_seconds: Any
    errors: Any
    reloads: Any

    def render(self) -> tuple[bytes, str]:
        """Return (body, content type) of the Prometheus exposition of every worker's samples."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST


_LOCK = threading.Lock()
_METRICS: Metrics | None = None


def metrics_for(shared_dir: str | None) -> Metrics:
    """Return this process's metrics, writing to ``<shared_dir>/metrics`` (the workers' shared state folder).

    Without a shared folder (one worker) the samples go to a private temporary folder removed at exit.
    The first call in a process decides the folder; later apps in the same process (tests) share it.
    """
    global _METRICS
    with _LOCK:
        if _METRICS is not None:
            return _METRICS
        if shared_dir:
            directory = os.path.join(shared_dir, "metrics")
        else:
            import atexit
            import shutil
            import tempfile

            directory = tempfile.mkdtemp(prefix="finetune-policy-metrics-")
            atexit.register(shutil.rmtree, directory, True)
        os.makedirs(directory, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from prometheus_client import Counter, Histogram, values

        values.ValueClass = values.MultiProcessValue()  # files under the folder just set, per process id
        _METRICS = Metrics(
            directory=directory,
            decisions=Counter("finetune_policy_decisions_total", "Decisions answered, by verdict and chosen rule",
                              ["verdict", "rule"], registry=None),
            decision_seconds=Histogram("finetune_policy_decision_seconds", "In-process decision time",
                                       buckets=_LATENCY, registry=None),
            audit_seconds=Histogram("finetune_policy_audit_append_seconds", "Audit append until committed",
                                    buckets=_LATENCY, registry=None),
            requests=Counter("finetune_policy_http_requests_total", "HTTP requests answered",
                             ["method", "route", "status"], registry=None),
            request_seconds=Histogram("finetune_policy_http_request_seconds", "HTTP request time", ["route"],
                                      buckets=_LATENCY, registry=None),
            errors=Counter("finetune_policy_errors_total", "Error answers by error code", ["code"], registry=None),
            reloads=Counter("finetune_policy_policy_reloads_total", "Policy reloads by outcome", ["outcome"],
                            registry=None),
        )
        return _METRICS
