"""``noflylist serve``: wire configuration, KMS, the list holder and the HTTP server together.

Start-up order, chosen so the service is observable before it is useful and never useful
before it is safe:

1. check the configuration (a malformed value exits at once, naming its variable: no
   retry can fix it), choose the attestation mode (no silent fallback) and open the NSM;
2. start the HTTP server: ``/healthz`` answers at once, screening answers 503 and
   ``/readyz`` says why until a list is loaded;
3. load the list in the background, retrying with backoff until it succeeds. The first
   attempts also find what the service may have to ask for: the AWS region from the
   instance metadata service when ``AWS_REGION`` is unset (at an enclave's boot the way to
   it through the parent may not be up yet), then the credentials; the KMS client and an
   S3 source are made once the region is known;
4. then poll the source every ``--refresh-interval`` seconds; ``SIGHUP`` reloads at once;
5. ``SIGTERM`` or ``SIGINT`` stops accepting, drains in-flight requests and exits.

Both loops are supervised (see :mod:`noflylist.lists`): an exception of any type is
counted as a failed load and the loop goes on; a loop that ends anyway makes ``/readyz``
answer 503, since no list will be loaded again. There is no third loop for the
credentials: :class:`~enclave.credentials.CredentialProvider` fetches and refreshes them
lazily, inside the KMS and S3 calls a load makes, so in the loader thread and under the
same supervision (a refresh that fails while the keys in hand are still valid keeps them;
one that leaves none is a failed load, counted and shown, retried by the next attempt).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from types import FrameType

from enclave import http_client
from enclave.attested_decrypt import Decryptor, make_decryptor, open_module
from enclave.credentials import CredentialProvider, region_from_environment, region_from_imds
from enclave.errors import NoflylistError
from enclave.kms import KMSClient, key_region
from enclave.modes import AttestationMode
from enclave.nsm import SecureModule
from noflylist.answers import AnswerKey
from noflylist.attestation_route import AttestationRoute
from noflylist.config import ServeConfig
from noflylist.lists import ListHolder, refresh_loop
from noflylist.metrics import Metrics
from noflylist.routes import RouteHandler, Routes
from noflylist.sources import Source, check_location, open_source
from noflylist.transport.server import Server
from noflylist.wire import ATTESTATION_PATH

log = logging.getLogger(__name__)

#: Pause between attempts at the first load, doubling up to the ceiling: IMDS, KMS or S3 may
#: be briefly unreachable while an instance boots, and a crash loop would only hide the
#: cause (and, in an enclave, an exited service ends the enclave).
FIRST_LOAD_RETRY = 2.0
FIRST_LOAD_RETRY_MAX = 60.0


class Service:
    """The running service; :meth:`stop` may be called from any thread or signal handler.

    The constructor checks everything that needs no network and raises for what no retry
    can fix; what has to be asked for (the region from IMDS) is asked by the first load.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        environ: Mapping[str, str] | None = None,
        simulated_module: SecureModule | None = None,
    ) -> None:
        self.config = config
        self._environ = environ
        self._credentials = CredentialProvider(environ)
        self._region = region_from_environment(environ)  # None: ask IMDS at the first load
        check_location(config.envelope)
        http_client.check_settings(os.environ if environ is None else environ)
        self._module = open_module(config.attestation, simulated_module=simulated_module)
        #: Made by the first load, once the region is known.
        self.kms: KMSClient | None = None
        self.metrics = Metrics()
        self.metrics.gauges["noflylist_kms_calls"] = (
            "KMS API calls made by this process.",
            lambda: float(self.kms.calls if self.kms else 0),
        )
        self.metrics.gauges["noflylist_kms_errors"] = (
            "KMS API calls that failed (after retries).",
            lambda: float(self.kms.errors if self.kms else 0),
        )
        self.holder = ListHolder(
            None, None, self.metrics, pinned_key_id=config.key_id, opener=self._open,
            match_rule=config.match, require_clients=config.require_clients,
        )  # fmt: skip
        # Made once per process and never saved: a restart makes a new key, which clients
        # meet in a fresh attestation document. Without an NSM nothing could bind it: unsigned.
        self.answer_key = AnswerKey() if self._module is not None else None
        routes = Routes(
            self.holder,
            self.metrics,
            log_format=config.log_format,
            extra_routes=_attestation_routes(
                self._module, self.holder, config.attestation, self.answer_key
            ),
            answer_key=self.answer_key,
            max_names_per_minute=config.max_names_per_minute,
        )
        self.server = Server(
            routes, self.metrics, host=config.host, port=config.port, workers=config.workers
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        log.info(
            "noflylist: starting; attestation %s, match rule %s, %s, region %s, credentials "
            "from %s",
            config.attestation,
            config.match,
            "lists sealed with a client policy only (--require-clients)"
            if config.require_clients else "open lists served (sealed without clients)",
            self._region or "from IMDS at the first load",
            self._credentials.source,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def run(self) -> None:
        """Serve until :meth:`stop`; returns after draining."""
        server_thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        server_thread.start()
        host, port = self.address
        log.info("listening on http://%s:%d", host, port)
        loader = threading.Thread(target=self._supervised_loader, name="loader", daemon=True)
        loader.start()
        self._stop.wait()
        log.info("stopping: draining in-flight requests")
        self.server.shutdown()
        server_thread.join(timeout=30)
        log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def reload(self) -> None:
        """What SIGHUP does: fetch the envelope again now, whatever the source."""
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reloading the envelope")
            self.reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _open(self) -> tuple[Source, Decryptor]:
        """The holder's opener: the region (from IMDS if need be), then the KMS client, the
        decryptor and the source. Called by each load until it succeeds once."""
        region = self._region or region_from_imds(self._environ)
        # A key ARN names the key's region, the only one whose KMS can decrypt under it.
        kms = KMSClient(key_region(self.config.key_id) or region, self._credentials,
                        environ=self._environ)  # fmt: skip
        decryptor = make_decryptor(self.config.attestation, kms, self._module)
        source = open_source(
            self.config.envelope, region=region, credentials=self._credentials,
            environ=self._environ,
        )  # fmt: skip
        self._region, self.kms = region, kms
        log.info(
            "noflylist: attestation %s, envelope %s, KMS %s in %s, this instance's region "
            "(%s), credentials from %s",
            decryptor.mode,
            source.description,
            kms.endpoint,
            kms.region,
            region,
            self._credentials.source,
        )
        return source, decryptor

    def _supervised_loader(self) -> None:
        """The loader thread. Its loops survive any exception; if they end all the same
        while the service runs, that is a bug, and the holder is told so that ``/readyz``
        and ``/metrics`` show it."""
        try:
            self._load_then_refresh()
        except BaseException as exc:  # reported, not re-raised: its message may quote data
            self.holder.note_loader_stopped("the loader thread", exc)
            return
        if not self._stop.is_set():
            self.holder.note_loader_stopped("the loader thread", None)

    def _load_then_refresh(self) -> None:
        pause = FIRST_LOAD_RETRY
        while not self._stop.is_set():
            if self._first_load():
                break
            log.info("retrying the first load in %.0f s", pause)  # cause logged already
            if self._wake.wait(timeout=pause):
                self._wake.clear()
            pause = min(pause * 2, FIRST_LOAD_RETRY_MAX)
        refresh_loop(self.holder, self.config.refresh_interval, self._stop, self._wake)

    def _first_load(self) -> bool:
        """One attempt at the first load; ``True`` once a list is in service."""
        try:
            return self.holder.reload(only_if_changed=False)
        except NoflylistError:
            return False  # logged and counted by the holder
        except Exception as exc:  # a bug outside reload's own boundary: count it, go on
            self.holder.note_loop_failure(exc, "the first load")
            return False


def _attestation_routes(
    module: SecureModule | None,
    holder: ListHolder,
    mode: AttestationMode,
    answer_key: AnswerKey | None,
) -> dict[str, RouteHandler]:
    """``GET /enclave/attestation`` where there is a module to attest with."""
    if module is None or answer_key is None:
        return {}
    return {
        ATTESTATION_PATH: AttestationRoute(module, holder, mode=mode, answer_key=answer_key)
    }
