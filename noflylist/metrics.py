"""Prometheus metrics, in the text exposition format, without a client library.

Labels are fixed, small sets chosen by the code (route names, status codes, outcomes), or
the client ids of the sealed client policy (the list owner's text, ``[A-Za-z0-9._-]``, at
most 200 of them): never anything taken from a request, so no listed or queried name can
reach a metric.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Request latency buckets, in seconds: the service answers in well under a millisecond,
#: so the fine end matters; the coarse end catches stalls (slow clients, GC, swapping).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class _Histogram:
    counts: list[int]
    total: float = 0.0
    count: int = 0


class Metrics:
    """Thread-safe counters and one latency histogram per route, plus gauges read on demand.

    ``gauges`` maps a metric name to ``(help text, function returning the value)``: the
    list holder registers the list's and the load state's there (listed in
    :mod:`noflylist.lists`), the service (:mod:`noflylist.service`) the KMS call counters, the
    server open connections.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._events: dict[tuple[str, str], int] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        #: A metric with labels: name -> (help, type, function returning (labels, value)
        #: pairs, where labels is the text between the braces, written by the code).
        self.families: dict[
            str, tuple[str, str, Callable[[], Sequence[tuple[str, float]]]]
        ] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration under ``route`` (a fixed name)."""
        with self._lock:
            self._requests[(route, status)] = self._requests.get((route, status), 0) + 1
            histogram = self._latency.get(route)
            if histogram is None:
                histogram = self._latency[route] = _Histogram([0] * (len(LATENCY_BUCKETS) + 1))
            histogram.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            histogram.total += seconds
            histogram.count += 1

    def count(self, name: str, outcome: str) -> None:
        """Count one event, e.g. ``count("noflylist_list_loads_total", "failed")``."""
        with self._lock:
            self._events[(name, outcome)] = self._events.get((name, outcome), 0) + 1

    def events(self, name: str, outcome: str) -> int:
        with self._lock:
            return self._events.get((name, outcome), 0)

    def render(self) -> str:
        """The exposition text served at ``GET /metrics``."""
        with self._lock:
            requests = sorted(self._requests.items())
            latency = {
                route: _Histogram(list(h.counts), h.total, h.count)
                for route, h in sorted(self._latency.items())
            }
            events = sorted(self._events.items())
        lines = [
            "# HELP noflylist_http_requests_total HTTP requests answered, by route and status.",
            "# TYPE noflylist_http_requests_total counter",
        ]
        for (route, status), value in requests:
            lines.append(
                f'noflylist_http_requests_total{{route="{route}",status="{status}"}} {value}'
            )
        lines += [
            "# HELP noflylist_http_request_duration_seconds Time to answer a request.",
            "# TYPE noflylist_http_request_duration_seconds histogram",
        ]
        base = "noflylist_http_request_duration_seconds"
        for route, histogram in latency.items():
            cumulative = 0
            for bound, count in zip(
                (*LATENCY_BUCKETS, float("inf")), histogram.counts, strict=True
            ):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{base}_bucket{{route="{route}",le="{le}"}} {cumulative}')
            lines.append(f'{base}_sum{{route="{route}"}} {histogram.total}')
            lines.append(f'{base}_count{{route="{route}"}} {histogram.count}')
        names = sorted({name for (name, _), _ in events})
        for name in names:
            lines += [f"# HELP {name} Events by outcome.", f"# TYPE {name} counter"]
            for (event, outcome), value in events:
                if event == name:
                    lines.append(f'{name}{{outcome="{outcome}"}} {value}')
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        for name, (help_text, kind, read_all) in sorted(self.families.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{{{labels}}} {value}" for labels, value in read_all()]
        return "\n".join(lines) + "\n"
