"""The worker's metrics in the Prometheus text format (`GET /metrics`, backend/http_endpoints.py).

Counters and histograms are updated on the event loop as jobs end; gauges (clients, queue depth, state,
device memory) are read from the server when a scrape asks. Each server has its own registry, never the
process-global one: tests run several servers in one process, and a registry holds a metric name once.
No label carries a prompt, a path, a token or a client address: the endpoint needs no token.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from protocol import Cancelled, Error, Message, Result

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the classic text format every Prometheus version scrapes
STATES = ("loading", "ready", "failed", "draining")
# A live frame should come back in well under a second; a final (Generate) job may take a minute.
FRAME_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
JOB_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class WorkerSnapshot:
    """What the worker is doing now: read on the event loop for each health check and scrape."""

    state: str  # one of STATES
    device: str  # the engine's device label ("starting" while unknown)
    models: dict[str, Any]  # what is loaded (checkpoint, LoRAs, ...); empty until ready
    message: str  # the engine's status in words, paths redacted
    clients: int  # open WebSocket connections
    queued: dict[str, int] = field(default_factory=dict)  # waiting jobs by kind: live, final
    running: str | None = None  # the kind of the job the worker runs now, if any
    torch_device: Any = None  # the engine's torch.device once chosen, for device memory


class ServerMetrics:
    """One server's metrics registry. `snapshot` is called on every scrape."""

    def __init__(self, snapshot: Callable[[], WorkerSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self.frame_latency = Histogram(
            "kld_frame_latency_seconds",
            "Live frames: from the frame's last image received to its result handed to the connection.",
            buckets=FRAME_BUCKETS,
            registry=self.registry,
        )
        self.job_latency = Histogram(
            "kld_job_latency_seconds",
            "Final (non-live) jobs: from the job's last image received to its result handed to the "
            "connection.",
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Counter(
            "kld_jobs",
            "Jobs ended, by outcome (result, cancelled, error) and code (the error code, or why it was "
            "cancelled; empty for results).",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.registry.register(_WorkerCollector(snapshot))
        ProcessCollector(registry=self.registry)  # host memory, CPU time and open files of this process

    def job_ended(self, message: Message, started: tuple[float, bool] | None) -> None:
        """Count a job's last message (a result, `cancelled` or an error naming it); `started`: when its
        input was complete (time.monotonic) and whether it was live, if it got that far."""
        if isinstance(message, Result):
            self.jobs.labels("result", "").inc()
            if started is not None:
                arrived, live = started
                histogram = self.frame_latency if live else self.job_latency
                histogram.observe(max(0.0, time.monotonic() - arrived))
        elif isinstance(message, Cancelled):
            self.jobs.labels("cancelled", message.reason).inc()
        elif isinstance(message, Error) and message.job_id is not None:
            self.jobs.labels("error", message.code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerCollector(Collector):
    """Gauges read from the worker at scrape time."""

    def __init__(self, snapshot: Callable[[], WorkerSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self._snapshot()
        yield GaugeMetricFamily("kld_connected_clients", "Open WebSocket connections.", now.clients)
        queued = GaugeMetricFamily(
            "kld_queue_depth", "Jobs waiting for the worker (not the running one), by kind.", labels=["kind"]
        )
        running = GaugeMetricFamily("kld_running_jobs", "Jobs the worker runs now (0 or 1), by kind.",
                                    labels=["kind"])  # fmt: skip
        for kind in ("live", "final"):
            queued.add_metric([kind], now.queued.get(kind, 0))
            running.add_metric([kind], 1 if now.running == kind else 0)
        yield queued
        yield running
        state = GaugeMetricFamily(
            "kld_worker_state", "1 for the state the worker is in (as /healthz says), 0 for the others.",
            labels=["state"],
        )  # fmt: skip
        for name in STATES:
            state.add_metric([name], 1 if now.state == name else 0)
        yield state
        memory = device_memory(now.torch_device)
        if memory:
            family = GaugeMetricFamily(
                "kld_device_memory_bytes",
                "GPU memory: allocated and reserved by this process's tensors, free and total on the device.",
                labels=["device", "kind"],
            )
            for kind, value in memory.items():
                family.add_metric([str(now.torch_device), kind], value)
            yield family


def device_memory(device: Any) -> dict[str, int]:
    """CUDA memory of the engine's device; empty on other devices, and while CUDA is not set up yet (torch
    is imported by the engine's thread: importing it here would stall the event loop for seconds)."""
    torch = sys.modules.get("torch")
    if torch is None or device is None or getattr(device, "type", None) != "cuda":
        return {}
    if not torch.cuda.is_initialized():
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
        "free": free,
        "total": total,
    }
