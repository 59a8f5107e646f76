"""The HTTP API: routes, strict query and name checks, answers, access log and metrics.

Endpoints::

    GET  /enclave/passenger?name=NAME   one name: the public demo's plain-text answer
    POST /v1/screen                     {"names": [...]} (1 to 1000): a JSON answer per name
    GET  /                              what this is
    GET  /healthz                       200 while the process runs
    GET  /readyz                        200 once a list is loaded, else 503 and why
    GET  /metrics                       Prometheus text format

What an auditor should be able to check here:

* **Fail closed.** Until a list is loaded every screening request gets 503, never "cleared".
* **No name leaves through a side door.** Error messages say what is wrong and where (e.g.
  ``names[3]``), never the value. The access log records only fixed strings and numbers: the
  method if it is a known one, the route's own path (never the request's path or query), the
  status, the body size and the duration. Metrics are labelled by fixed route names.
* **Nothing here decides.** Both screening routes hand each name, as the client wrote it, to
  :func:`noflylist.decision.decide` and turn its verdict into a status: listed or cleared
  200, refused 400 (with the verdict's reason), unavailable 503.
* **Who may ask, and how much, is the list's.** When the list in service carries a client
  policy (:mod:`noflylist.clients`), a screening request must be signed by one of its
  clients (:mod:`noflylist.httpsig`; else 401 with ``Accept-Signature`` and a one-line
  reason) and every name it asks is charged to that client's budgets before any is looked
  up (over budget: 429 with ``Retry-After`` and ``Noflylist-Budget``). The signature is
  checked before the query or the body is read, so its work does not depend on the name. A
  list without a policy is served open, and says so in ``/readyz`` and ``/metrics``; a
  global budget (``--max-names-per-minute``) may still bound it.
* **The query is parsed strictly** (``application/x-www-form-urlencoded``, where ``+`` is a
  space): a ``%`` not followed by two hex digits, or bytes that are not UTF-8, are refused,
  not replaced as :func:`urllib.parse.parse_qs` would.

HEAD and every method other than the one a route serves get 405 with ``Allow``; methods
HTTP does not define get 501. :class:`Routes` answers whole, parsed requests and nothing else:
sockets and their limits live in :mod:`noflylist.transport` (which imports nothing of this
module; :class:`noflylist.transport.server.Server` is handed a :class:`Routes`), the request
parser and the response encoder in :mod:`noflylist.transport.framing`.

The access log is written on the thread that answers (for single names, the connection loop):
its handlers should not block. Logging every request roughly doubles the CPU time of one.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from enclave import http_syntax, strict_json
from enclave.errors import NoflylistError
from noflylist.answer_format import NONCE_HEADER, AnswerFormatError, parse_nonce
from noflylist.answers import AnswerKey, Facts, refused, signed_headers
from noflylist.clients import BudgetExceeded, Budgets, Client, budget_headers, open_client
from noflylist.decision import (
    UNAVAILABLE,
    Listed,
    Refused,
    Unavailable,
    Verdict,
    answer,
    decide,
)
from noflylist.httpsig import (
    ACCEPT_SIGNATURE,
    DEFAULT_NONCES_PER_CLIENT,
    REPLAY_WINDOW_SECONDS,
    ReplayCache,
    SignatureRefused,
    verify_request,
)
from noflylist.lists import NOT_LOADED_YET, ListHolder, ListInService
from noflylist.metrics import Metrics
from noflylist.transport.framing import Request, encode_response
from noflylist.transport.limits import DEFAULT_LIMITS
from noflylist.wire import PASSENGER_PATH, SCREEN_PATH

__all__ = ["RequestRejected", "RouteHandler", "RouteResponse", "Routes"]

log = logging.getLogger(__name__)

#: Most names in one ``POST /v1/screen``: a large flight's manifest.
MAX_BATCH_NAMES = 1000
#: Largest manifest the JSON reader takes: the transport's default body limit.
MAX_MANIFEST_BYTES = DEFAULT_LIMITS.max_body_bytes
#: Nesting of a manifest, ``{"names": [...]}``; anything deeper is refused while parsing.
_MANIFEST_DEPTH = 2
#: Most ``key=value`` pairs in a query string; the request line limit bounds the rest.
MAX_QUERY_PARAMS = 32
#: Longest ``/readyz`` reason, so a long error from a load cannot bloat the answer.
MAX_REASON_CHARS = 300
#: Most nonces remembered for one client (about 300 bytes each): a client whose budget
#: allows more requests in the replay window than this is refused "replayed" until some expire.
MAX_NONCES_PER_CLIENT = 1_000_000
#: Sent with 503 so that clients back off instead of hammering a service that is loading.
RETRY_AFTER_SECONDS = "5"

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Methods HTTP defines (RFC 9110 section 9, RFC 5789); any other gets 501.
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
#: Headers the server sets on every response; an extra route may not set them.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "cache-control", "x-content-type-options", "server",
     "date", "connection", "transfer-encoding"}
)
_HEADER_NAME = http_syntax.TOKEN
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_NONCE_HEADER = NONCE_HEADER.lower()  # the framer gives header names in lower case
_ROUTE_PATH = re.compile(r"/[\x21-\x3e\x40-\x7e]*")  # what a request target can match, no '?'


class RouteResponse(NamedTuple):
    """What a route handler returns. ``headers`` may not set the headers the server sets."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = MappingProxyType({})


#: An extra route: called with the parsed query (name to values, in order) and the request
#: headers (lower-case names) for ``GET`` of its path, on a worker thread.
RouteHandler = Callable[[Mapping[str, list[str]], Mapping[str, str]], RouteResponse]


class RequestRejected(NoflylistError):
    """A request this module refuses; ``status`` and a reason that never echoes the input,
    and the headers the refusal needs (``Accept-Signature``, ``Retry-After``)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers: Mapping[str, str] = headers or {}


# -- parsing what the client sent ---------------------------------------------------------


def _percent_decode(text: str) -> str:
    """``+`` is a space, ``%XX`` a byte; the bytes must be UTF-8 (WHATWG URL, urlencoded)."""
    raw = text.replace("+", " ").encode("ascii")  # the request target is ASCII already
    if raw.count(b"%") != len(_PERCENT.findall(raw)):
        raise RequestRejected(400, "the query has a '%' not followed by two hex digits")
    try:
        return _PERCENT.sub(lambda m: bytes((int(m[1], 16),)), raw).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(400, "the query's percent-encoded bytes are not UTF-8") from None


def _parse_query(query: str) -> dict[str, list[str]]:
    """Parse ``a=1&b=2`` strictly; empty pairs are skipped, a pair without ``=`` has ''."""
    params: dict[str, list[str]] = {}
    pairs = [pair for pair in query.split("&") if pair]
    if len(pairs) > MAX_QUERY_PARAMS:
        raise RequestRejected(400, f"the query has more than {MAX_QUERY_PARAMS} parameters")
    for pair in pairs:
        key, _, value = pair.partition("=")
        params.setdefault(_percent_decode(key), []).append(_percent_decode(value))
    return params


def _parse_manifest(request: Request) -> list[str]:
    """The names of a ``POST /v1/screen`` body, each a string, or a refusal naming the index.
    Whether a name can be screened is :func:`noflylist.decision.decide`'s to say."""
    media, _, parameters = request.headers.get("content-type", "").partition(";")
    charset = parameters.strip().lower().replace(" ", "")
    if media.strip().lower() != JSON or charset not in ("", "charset=utf-8"):
        raise RequestRejected(415, "send the names as Content-Type: application/json (UTF-8)")
    try:
        document = strict_json.loads(
            request.body, max_bytes=MAX_MANIFEST_BYTES, max_depth=_MANIFEST_DEPTH
        )
    except strict_json.JSONError as exc:  # its message names the problem, never the body
        raise RequestRejected(400, f"the body is refused: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"names"}:
        raise RequestRejected(400, 'the body must be a JSON object {"names": [...]}')
    names = document["names"]
    if not isinstance(names, list) or not names:
        raise RequestRejected(400, '"names" must be a non-empty list of strings')
    if len(names) > MAX_BATCH_NAMES:
        raise RequestRejected(413, f"at most {MAX_BATCH_NAMES} names per request; split it")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise RequestRejected(400, f"names[{index}] is not a string")
    return names


# -- the application ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    name: str  # the metrics label: fixed by the code, never taken from a request
    path: str
    method: str
    handler: Callable[[Request, str, Facts | None], RouteResponse]
    quick: bool  # fixed microseconds, no I/O: answered on the loop thread
    signable: bool = False  # a screening route: signs its answer when the client sends a nonce


class Routes:
    """Routes complete requests; implements :class:`noflylist.transport.workers.Application`.

    ``extra_routes`` maps further ``GET`` paths to handlers (e.g. an attestation endpoint).
    The access log goes to ``access_log`` (default ``noflylist.access``) as ``log_format``,
    ``"text"`` or ``"json"``. With an ``answer_key``, a screening request that carries
    ``Noflylist-Nonce`` gets its answer signed (:mod:`noflylist.answers`); without the header
    the answer is byte for byte what it would be without a key. ``max_names_per_minute``
    is the global budget of an open list (every request shares it); ``None``: unbounded.
    """

    def __init__(
        self,
        holder: ListHolder,
        metrics: Metrics,
        *,
        access_log: logging.Logger | None = None,
        log_format: str = "text",
        extra_routes: Mapping[str, RouteHandler] | None = None,
        answer_key: AnswerKey | None = None,
        max_names_per_minute: int | None = None,
        budgets: Budgets | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        if log_format not in ("text", "json"):
            raise ValueError("log_format must be 'text' or 'json'")
        extra_routes = extra_routes or {}
        self._holder = holder
        self._metrics = metrics
        self._access_log = access_log or logging.getLogger("noflylist.access")
        self._log_json = log_format == "json"
        self._answer_key = answer_key
        self._budgets = budgets or Budgets()
        self._replay = replay or ReplayCache(per_client=self._nonces_for)
        self._open_budget = (
            None if max_names_per_minute is None else open_client(max_names_per_minute)
        )
        _register_client_metrics(metrics, holder, self._budgets, self._open_budget)
        routes = [
            _Route("index", "/", "GET", self._index, quick=True),
            _Route("healthz", "/healthz", "GET", self._healthz, quick=True),
            _Route("readyz", "/readyz", "GET", self._readyz, quick=True),
            _Route("passenger", PASSENGER_PATH, "GET", self._passenger, quick=True, signable=True),
            # Gauges are callables other modules register; a manifest is up to 1000 lookups.
            _Route("metrics", "/metrics", "GET", self._metrics_page, quick=False),
            _Route("screen", SCREEN_PATH, "POST", self._screen, quick=False, signable=True),
        ]
        self._routes = {route.path: route for route in routes}
        for path, handler in extra_routes.items():
            if not _ROUTE_PATH.fullmatch(path) or path in self._routes:
                raise ValueError(
                    f"extra route {path!r} must be a new path: '/' and visible ASCII, no '?'"
                )
            self._routes[path] = _Route(path, path, "GET", _extra(path, handler), quick=False)
        self._index_page = _index_page(extra_routes)

    def is_quick(self, request: Request) -> bool:
        """Only known routes that do fixed work without I/O, and refusals, run on the loop.
        A signed request is not quick: checking an Ed25519 signature takes about 0.1 ms."""
        route = self._routes.get(request.target.partition("?")[0])
        if route is None or request.method != route.method:
            return True
        return route.quick and "signature-input" not in request.headers

    def handle(self, request: Request) -> bytes:
        path, _, query = request.target.partition("?")
        route = self._routes.get(path)
        headers: Mapping[str, str] = {}
        if request.method not in _KNOWN_METHODS:
            status, content_type, body = 501, TEXT, b"this method is not implemented\n"
        elif route is None:
            status, content_type, body = 404, TEXT, b"no such endpoint; GET / lists them\n"
        elif request.method != route.method:
            status, content_type = 405, TEXT
            body = f"{route.path} answers only {route.method}\n".encode()
            headers = {"Allow": route.method}
        else:
            nonce: bytes | None = None
            facts: Facts | None = None
            try:
                if route.signable and self._answer_key is not None:
                    nonce = _nonce(request)
                    facts = Facts() if nonce is not None else None
                status, content_type, body, headers = route.handler(request, query, facts)
            except RequestRejected as exc:
                status, content_type, body = exc.status, TEXT, f"{exc}\n".encode()
                headers = exc.headers
                if status == 503:
                    headers = {"Retry-After": RETRY_AFTER_SECONDS}
            except Exception as exc:
                # The message may quote data; log the type and where, never the message.
                where = traceback.extract_tb(exc.__traceback__)[-1]
                log.error(
                    "%s failed: %s at %s:%s", route.name, type(exc).__name__,
                    where.filename, where.lineno,
                )
                status, content_type, body = 500, TEXT, b"internal error\n"
                request.keep_alive = False
                facts = None  # a failure is not an answer: nothing to sign
            if facts is not None and nonce is not None and self._answer_key is not None:
                if not facts.verdicts:  # refused before a name was decided (query, manifest)
                    facts.verdicts = (refused(body.decode("utf-8", "replace")),)
                headers = {**headers, **signed_headers(
                    self._answer_key, route=route.path, nonce=nonce, status=status, body=body,
                    facts=facts,
                )}  # fmt: skip
                self._metrics.count("noflylist_answers_signed_total", route.name)
        response = encode_response(
            status, content_type, body, keep_alive=request.keep_alive,
            http10=request.http10, headers=headers.items(), head_only=request.method == "HEAD",
        )
        method = request.method if request.method in _KNOWN_METHODS else "-"
        self._record(route.name if route else "other", method, route.path if route else "-",
                     status, len(body), time.monotonic() - request.received)
        return response

    def reject(self, status: int, reason: str) -> bytes:
        body = f"{reason}\n".encode()
        self._record("malformed", "-", "-", status, len(body), 0.0)
        return encode_response(status, TEXT, body, keep_alive=False)

    def _record(
        self, route: str, method: str, path: str, status: int, size: int, seconds: float
    ) -> None:
        """Count and log one answer, from fixed strings and numbers only."""
        self._metrics.observe_request(route, status, seconds)
        if not self._access_log.isEnabledFor(logging.INFO):
            return
        milliseconds = round(seconds * 1000, 3)
        if self._log_json:
            line = json.dumps({"method": method, "path": path, "status": status,
                               "bytes": size, "duration_ms": milliseconds})
            self._access_log.info("%s", line)
        else:
            self._access_log.info("%s %s %d %d %.3fms", method, path, status, size, milliseconds)

    # Routes.

    def _index(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        return RouteResponse(200, TEXT, self._index_page)

    def _healthz(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        return RouteResponse(200, TEXT, b"ok\n")

    def _readyz(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        """200 with ``ready: list serial N`` first while a list is in service, else 503 with
        ``not ready: why``; then the list's age and the last load's outcome and time, so a
        refresh that keeps failing (a stale list) shows here as well as in ``/metrics``.
        A loader that has stopped (a bug) makes the service not ready: its list can no
        longer change."""
        status = self._holder.status
        lines: list[str] = []
        current = status.current
        if current is not None:
            age = status.list_age() or 0.0
            lines.append(
                f"list: {current.entries} entries, loaded {_stamp(current.loaded_at)} "
                f"({age:.0f} s ago)"
            )
        if status.outcome is not None:
            line = f"last load: {status.outcome} at {_stamp(status.attempted_at)}"
            if status.failures_in_a_row:
                since = status.since_success()
                line += f", {status.failures_in_a_row} in a row; last success " + (
                    "never" if since is None
                    else f"{_stamp(status.succeeded_at)} ({since:.0f} s ago)"
                )
                if current is not None or status.loader_stopped is not None:
                    line += f": {_reason(status.error or '')}"  # else the first line says it
            lines.append(line)
        if current is not None:
            lines.append(_who_may_ask(current, self._open_budget))
        if status.loader_stopped is not None:
            first = f"not ready: {_reason(status.loader_stopped)}"
        elif current is not None:
            text = "\n".join([f"ready: list serial {current.serial}", *lines]) + "\n"
            return RouteResponse(200, TEXT, text.encode())
        else:
            first = f"not ready: {_reason(status.error or NOT_LOADED_YET)}"
        raise RequestRejected(503, "\n".join([first, *lines]))

    def _metrics_page(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        return RouteResponse(200, METRICS_TYPE, self._metrics.render().encode())

    def _passenger(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        """One name. ``facts``, when the answer is to be signed, gathers what was decided."""
        current = self._holder.current  # one list for the whole request, even during a swap
        if facts is not None:  # a refusal before the look-up (401, 429, 400) names it too
            _served(facts, current)
        client = self._client_of(request, current)  # before the query is read
        names = _parse_query(query).get("name", [])
        if len(names) != 1:
            problem = "is missing" if not names else "appears more than once"
            raise RequestRejected(400, f"the query parameter 'name' {problem}")
        name = names[0]
        self._charge(client, 1)
        verdict = decide(current.table if current is not None else None, name)
        if facts is not None:
            facts.question = name.encode("utf-8")
            facts.verdicts = (_verdict_line(verdict),)
        if isinstance(verdict, Refused):
            raise RequestRejected(400, verdict.reason)
        if isinstance(verdict, Unavailable):
            raise RequestRejected(503, verdict.reason)
        return RouteResponse(200, TEXT, answer(name, verdict.listed).encode("utf-8"))

    def _screen(self, request: Request, query: str, facts: Facts | None) -> RouteResponse:
        """A manifest. Signed, its statement carries one verdict a name when it is answered
        name by name (200), else one for the request as a whole."""
        current = self._holder.current  # one list for the whole manifest, even during a swap
        if facts is not None:
            facts.question = request.body
            _served(facts, current)
        client = self._client_of(request, current)  # before the body is read
        names = _parse_manifest(request)
        self._charge(client, len(names))  # every name, before any is looked up
        table = current.table if current is not None else None
        verdicts = [decide(table, name, f"names[{index}]") for index, name in enumerate(names)]
        for verdict in verdicts:  # every name is admitted before "no list" is said
            if isinstance(verdict, Refused):
                if facts is not None:
                    facts.verdicts = (_verdict_line(verdict),)
                raise RequestRejected(400, verdict.reason)
        if current is None:
            if facts is not None:
                facts.verdicts = ("unavailable",)
            raise RequestRejected(503, UNAVAILABLE.reason)
        if facts is not None:
            facts.verdicts = tuple(_verdict_line(verdict) for verdict in verdicts)
        results = [{"name": name, "listed": isinstance(verdict, Listed)}
                   for name, verdict in zip(names, verdicts, strict=True)]  # fmt: skip
        body = json.dumps({"results": results, "serial": current.serial}, ensure_ascii=False)
        return RouteResponse(200, JSON, body.encode("utf-8"))

    # Who may ask, and how much.

    def _client_of(self, request: Request, current: ListInService | None) -> Client | None:
        """The client a request is charged to: under a sealed policy, the one whose key
        signed it (else 401); for an open list, the global budget's, or ``None`` (unbounded).
        No list in service: ``None``, and :func:`decide` answers 503."""
        policy = None if current is None else current.clients
        if policy is None:
            return self._open_budget if current is not None else None
        try:
            verified = verify_request(
                request.method, request.target, request.headers, request.body,
                public_keys=policy.public_keys, replay=self._replay,
            )  # fmt: skip
        except SignatureRefused as exc:  # its message never quotes a field or the target
            self._metrics.count("noflylist_signature_refused_total", exc.reason)
            raise RequestRejected(
                401, f"signature refused ({exc.reason}): {exc}",
                {"Accept-Signature": ACCEPT_SIGNATURE},
            ) from None  # fmt: skip
        client = policy.client(verified.client_id)
        if client is None:  # verify_request found its key in this policy: not reached
            raise RequestRejected(401, "signature refused (unknown-client)")
        return client

    def _nonces_for(self, client_id: str) -> int:
        """How many nonces to remember for a client: twice the requests its minute budget
        lets it have answered in the replay window (one name each), at least the default."""
        current = self._holder.current
        policy = None if current is None else current.clients
        client = None if policy is None else policy.client(client_id)
        per_minute = 0 if client is None else client.names_per_minute
        window = 2 * per_minute * REPLAY_WINDOW_SECONDS // 60
        return min(MAX_NONCES_PER_CLIENT, max(DEFAULT_NONCES_PER_CLIENT, window))

    def _charge(self, client: Client | None, names: int) -> None:
        """Charge the names to the client's budgets, or refuse the request (429) unlooked-up."""
        if client is None:
            return
        try:
            self._budgets.charge(client, names)
        except BudgetExceeded as exc:
            self._metrics.count("noflylist_budget_refused_total", exc.budget)
            raise RequestRejected(429, str(exc), budget_headers(exc)) from None


def _who_may_ask(current: ListInService, open_budget: Client | None) -> str:
    """``/readyz``'s line on who may ask: the sealed policy, or that the list is open."""
    if current.clients is not None:
        return (
            f"who may ask: {len(current.clients.clients)} client(s) of the sealed policy "
            f"{current.clients.sha256.hex()[:16]}, signed requests only"
        )
    bound = (
        "no budget" if open_budget is None
        else f"a global budget of {open_budget.names_per_minute} names a minute"
    )  # fmt: skip
    return f"who may ask: anyone (open list, sealed without clients), {bound}"


def _register_client_metrics(
    metrics: Metrics, holder: ListHolder, budgets: Budgets, open_budget: Client | None
) -> None:
    """``noflylist_open_queries`` and, per client id, names answered, refused, budget left."""

    def is_open() -> float:
        current = holder.current
        return float(current is not None and current.clients is None)

    def clients() -> tuple[Client, ...]:
        current = holder.current
        if current is not None and current.clients is not None:
            return current.clients.clients
        return (open_budget,) if open_budget is not None else ()

    def names() -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = []
        for standing in budgets.standings(clients()):
            rows.append((f'client="{standing.client_id}",outcome="answered"', standing.answered))
            rows.append((f'client="{standing.client_id}",outcome="refused"', standing.refused))
        return rows

    def left() -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = []
        for standing in budgets.standings(clients()):
            rows.append((f'client="{standing.client_id}",budget="names_per_minute"',
                         standing.minute_left))  # fmt: skip
            rows.append((f'client="{standing.client_id}",budget="names_per_day"',
                         standing.day_left))  # fmt: skip
        return rows

    metrics.gauges["noflylist_open_queries"] = (
        "1 while the list in service is open (sealed without a client policy): anyone may ask.",
        is_open,
    )
    metrics.families["noflylist_client_names_total"] = (
        "Names each client asked, charged and answered or refused over budget.", "counter", names
    )
    metrics.families["noflylist_client_budget_left"] = (
        "Names each client may still ask, by budget.", "gauge", left
    )


def _index_page(extra_paths: Iterable[str]) -> bytes:
    """The text of ``GET /``: what this is, its endpoints, then the extra routes' paths."""
    lines = [
        "noflylist: screens passengers against a secret no-fly list inside an AWS Nitro "
        "Enclave.",
        "",
        "GET  /enclave/passenger?name=NAME  screen one name (plain text)",
        'POST /v1/screen                    screen {"names": [...]}, 1 to '
        f"{MAX_BATCH_NAMES} names (JSON)",
        "GET  /healthz                      the process is running",
        "GET  /readyz                       a list is loaded",
        "GET  /metrics                      Prometheus metrics",
    ]
    lines += [f"GET  {path}" for path in extra_paths]
    return ("\n".join(lines) + "\n").encode()


def _stamp(unix_time: float) -> str:
    """A Unix time as ``2026-01-05T09:01:12Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_time))


def _reason(text: str) -> str:
    """A load error on one line, at most :data:`MAX_REASON_CHARS` long."""
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _nonce(request: Request) -> bytes | None:
    """The request's ``Noflylist-Nonce``, or ``None``; a malformed one is refused unsigned."""
    value = request.headers.get(_NONCE_HEADER)
    if value is None:
        return None
    try:
        return parse_nonce(value)
    except AnswerFormatError as exc:  # names the header and the sizes, never the value
        raise RequestRejected(400, str(exc)) from None


def _verdict_line(verdict: Verdict) -> str:
    """The statement's line for one decided name."""
    if isinstance(verdict, Listed):
        return "listed"
    if isinstance(verdict, Refused):
        return refused(verdict.reason)
    if isinstance(verdict, Unavailable):
        return "unavailable"
    return "cleared"


def _served(facts: Facts, current: ListInService | None) -> None:
    """Record the list an answer was decided on (``None`` while none is loaded)."""
    facts.serial = None if current is None else current.serial
    facts.envelope_sha256 = None if current is None else current.envelope_sha256


def _extra(
    path: str, handler: RouteHandler
) -> Callable[[Request, str, Facts | None], RouteResponse]:
    """Adapt an extra route: parse its query strictly, check what it returns."""

    def call(request: Request, query: str, facts: Facts | None) -> RouteResponse:
        result = RouteResponse(*handler(_parse_query(query), MappingProxyType(request.headers)))
        ok = (
            200 <= result.status <= 599
            and isinstance(result.body, bytes)
            and _HEADER_VALUE.fullmatch(result.content_type) is not None
            and all(
                _HEADER_NAME.fullmatch(name) and _HEADER_VALUE.fullmatch(value)
                and name.lower() not in _RESERVED_HEADERS
                for name, value in result.headers.items()
            )
        )
        if not ok:
            log.error(
                "the handler of %s returned a bad status, content type or header (the "
                "server's own headers may not be set); answering 500", path
            )
            request.keep_alive = False
            return RouteResponse(500, TEXT, b"internal error\n")
        return result

    return call
