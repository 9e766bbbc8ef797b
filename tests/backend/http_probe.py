"""Plain HTTP requests to a backend's /healthz and /metrics, as a balancer or Prometheus sends them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of `GET path`; error statuses are answers too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, content_type, body = http_get(port, "/healthz")
    assert content_type == "application/json", content_type
    return status, json.loads(body)


def wait_until_loaded(port: int, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """The health once the worker is past "loading" (ready or failed), or when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = health(port)
        if body["state"] != "loading" or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by Prometheus' own text parser: (name, sorted labels) -> value."""
    status, content_type, body = http_get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled sample that never appeared (a counter not yet incremented)."""
    assert any(key[0] == name for key in samples), f"no {name} in /metrics"
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
