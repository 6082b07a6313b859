"""Prometheus metrics and a health endpoint, served on an optional HTTP listener.

Counters are bumped by the loops as things happen; the figures that live in the database
(documents by state, in flight, paused, the oldest queued) are read from it at scrape time,
so every instance reports the same truth; so is /healthz's verdict (healthy, problems).
deploy/prometheus and deploy/grafana use these names: tests/test_exported_metrics.py checks
that a running daemon exports each.
"""

from __future__ import annotations

import json
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher.logs import get_logger
from watcher.store import TRANSIENT_DB_ERRORS, Store, StoreError
from watcher.store.operator import PipelineSummary, summaries

log = get_logger()
PREFIX = "unstract_watcher_"
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class Metrics:
    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        self._unwritten_names: set[str] = set()
        labels = ["pipeline"]
        r = self.registry
        self.uploads = Counter(
            PREFIX + "uploads", "Uploads by outcome", [*labels, "outcome"], registry=r
        )
        self.polls = Counter(
            PREFIX + "polls", "Status polls by answer", [*labels, "answer"], registry=r
        )
        self.retries = Counter(
            PREFIX + "retries", "Retries by stage", [*labels, "stage"], registry=r
        )
        self.rate_limited = Counter(PREFIX + "rate_limited", "429 answers", labels, registry=r)
        self.errors = Counter(PREFIX + "errors", "Errors by kind", [*labels, "kind"], registry=r)
        self.results = Counter(
            PREFIX + "results", "Result files by outcome", [*labels, "outcome"], registry=r
        )
        self.latency = Histogram(
            PREFIX + "result_seconds",
            "From queued to result file",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cost = Counter(
            PREFIX + "llm_cost_dollars", "LLM cost reported by the API", labels, registry=r
        )
        self.tokens = Counter(
            PREFIX + "llm_tokens", "LLM tokens reported by the API", labels, registry=r
        )
        self.notices = Counter(
            PREFIX + "notices",
            "Webhook notice tries by event and outcome",
            [*labels, "event", "outcome"],
            registry=r,
        )
        self.unreachable = Gauge(
            PREFIX + "api_unreachable_seconds",
            "How long this instance has found the pipeline's API out of reach (0: reachable)",
            labels,
            registry=r,
        )
        self.in_flight_limit = Gauge(
            PREFIX + "in_flight_limit",
            "Executions this instance lets run at once: max_in_flight, lowered after 429s",
            labels,
            registry=r,
        )
        self.unwritten = Gauge(
            PREFIX + "results_unwritten",
            "Results the finisher's last try could not write (a result folder or the result "
            "table refused); they stay stored and are tried again",
            labels,
            registry=r,
        )
        self.healthy = Gauge(
            PREFIX + "healthy", "1 if /healthz would answer 200 at this scrape", registry=r
        )
        self.health_problems = Gauge(
            PREFIX + "health_problems", "How many problems /healthz reports", registry=r
        )
        if store is not None:
            r.register(_TableCollector(store))

    def record_usage(self, pipeline: str, metadata: Any) -> None:
        """Add the usage block of a result's metadata (include_metadata = true), if any."""
        usage = metadata.get("usage") if isinstance(metadata, dict) else None
        if not isinstance(usage, dict):
            return
        try:
            self.cost.labels(pipeline).inc(float(usage.get("cost_in_dollars") or 0))
            self.tokens.labels(pipeline).inc(float(usage.get("total_tokens") or 0))
        except (TypeError, ValueError):
            return

    def results_round(self, claimed: Iterable[str], unwritten: Iterable[str]) -> None:
        """A round of the finisher took results of these pipelines (a name per result) and
        could not write these; a pipeline it took none of keeps its figure, unless it took
        none at all (nothing waits to be written: nothing can be wrong), as /healthz does."""
        taken, left = Tally(claimed), Tally(unwritten)
        names = set(taken) if taken else self._unwritten_names
        for name in names:
            self.unwritten.labels(name).set(left[name])
        self._unwritten_names |= names

    def observe_health(self, problems: list[str]) -> None:
        self.healthy.set(0.0 if problems else 1.0)
        self.health_problems.set(len(problems))


class _TableCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store
        self.database_up = True  # as last seen: log only when it changes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        documents = GaugeMetricFamily(
            PREFIX + "documents", "Jobs by state", labels=["pipeline", "state"]
        )
        in_flight = GaugeMetricFamily(
            PREFIX + "in_flight", "Executions running", labels=["pipeline"]
        )
        paused = GaugeMetricFamily(
            PREFIX + "paused", "1 if the pipeline is paused", labels=["pipeline"]
        )
        oldest = GaugeMetricFamily(
            PREFIX + "oldest_queued_seconds",
            "Age of the pipeline's oldest queued document (0: none queued)",
            labels=["pipeline"],
        )
        found, now = self._summaries()
        for summary in found:
            for state, count in summary.counts.items():
                documents.add_metric([summary.name, state], count)
            in_flight.add_metric([summary.name], summary.in_flight_executions)
            paused.add_metric([summary.name], 1.0 if summary.paused_reason else 0.0)
            since = summary.oldest_waiting_since
            oldest.add_metric([summary.name], 0.0 if since is None else max(0.0, now - since))
        up = GaugeMetricFamily(
            PREFIX + "database_up", "1 if the job table could be read at this scrape"
        )
        up.add_metric([], 1.0 if self.database_up else 0.0)
        yield from (documents, in_flight, paused, oldest, up)

    def _summaries(self) -> tuple[list[PipelineSummary], float]:
        """The summaries, and the database's clock to age them by."""
        # A database outage must not take the other metrics (and the scrape) down with it.
        try:
            found, now = summaries(self.store), self.store.clock()
        except (StoreError, *TRANSIENT_DB_ERRORS) as exc:
            if self.database_up:
                log.error("metrics: the database is unreachable", error=str(exc))
            self.database_up = False
            return [], 0.0
        if not self.database_up:
            log.info("metrics: the database is reachable again")
        self.database_up = True
        return found, now


def serve_metrics(
    metrics: Metrics, host: str, port: int, health: Callable[[], list[str]]
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz in a daemon thread; `health` returns what is broken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                metrics.observe_health(health())
                self._reply(200, generate_latest(metrics.registry), "text/plain; version=0.0.4")
            elif self.path in ("/healthz", "/health"):
                problems = health()
                body = json.dumps({"ok": not problems, "problems": problems}).encode()
                self._reply(503 if problems else 200, body, "application/json")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics listening", url=f"http://{host}:{server.server_port}/metrics")
    return server
