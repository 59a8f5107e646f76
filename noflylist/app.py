"""``noflylist serve``: wire configuration, KMS, the list holder and the HTTP server together.

Start-up order, chosen so the service is observable before it is useful and never useful
before it is safe:

1. choose the attestation mode (no silent fallback) and open the NSM;
2. start the HTTP server: ``/healthz`` answers at once, screening answers 503 and
   ``/readyz`` says why until a list is loaded;
3. load the list in the background, retrying with backoff until it succeeds;
4. then poll the source every ``--refresh-interval`` seconds; ``SIGHUP`` reloads at once;
5. ``SIGTERM`` or ``SIGINT`` stops accepting, drains in-flight requests and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from enclave.attested import make_decryptor, open_module
from enclave.credentials import CredentialProvider, resolve_region
from enclave.errors import EnclaveError
from enclave.kms import KMSClient
from enclave.nsm import SecureModule
from noflylist.attestation_endpoint import PATH as ATTESTATION_PATH
from noflylist.attestation_endpoint import AttestationRoute
from noflylist.config import ServeConfig
from noflylist.metrics import Metrics
from noflylist.server import RouteHandler, Server
from noflylist.service import ListHolder, refresh_loop
from noflylist.sources import open_source

log = logging.getLogger(__name__)

#: Pause between attempts at the first load, doubling up to the ceiling: KMS or S3 may be
#: briefly unreachable while an instance boots, and a crash loop would only hide the cause.
FIRST_LOAD_RETRY = 2.0
FIRST_LOAD_RETRY_MAX = 60.0


def load_simulated_module(state: str) -> SecureModule:
    """The simulator's NSM, from its state folder. The simulator is not in the enclave image."""
    try:
        from enclave.simulator.ca import load_or_create
        from enclave.simulator.nsm import SimulatedNSM
    except ImportError:
        raise EnclaveError(
            "--attestation simulated needs the enclave simulator, which is not installed here "
            "(it is deliberately left out of the enclave image)"
        ) from None
    return SimulatedNSM(load_or_create(Path(state) / "ca"))


class Service:
    """The running service; :meth:`stop` may be called from any thread or signal handler."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        environ: Mapping[str, str] | None = None,
        simulated_module: SecureModule | None = None,
    ) -> None:
        self.config = config
        credentials = CredentialProvider(environ)
        region = resolve_region(environ)
        self.kms = KMSClient(region, credentials, environ=environ)
        if config.attestation == "simulated" and simulated_module is None:
            assert config.simulator_state is not None  # checked by build_serve_config
            simulated_module = load_simulated_module(config.simulator_state)
        module = open_module(config.attestation, simulated_module=simulated_module)
        decryptor = make_decryptor(config.attestation, self.kms, module)
        self.metrics = Metrics()
        self.metrics.gauges["noflylist_kms_calls"] = (
            "KMS API calls made by this process.",
            lambda: float(self.kms.calls),
        )
        self.metrics.gauges["noflylist_kms_errors"] = (
            "KMS API calls that failed (after retries).",
            lambda: float(self.kms.errors),
        )
        source = open_source(
            config.envelope, region=region, credentials=credentials, environ=environ
        )
        self.holder = ListHolder(source, decryptor, self.metrics, pinned_key_id=config.key_id)
        self.server = Server(
            self.holder,
            self.metrics,
            host=config.host,
            port=config.port,
            workers=config.workers,
            log_format=config.log_format,
            extra_routes=_attestation_routes(module, self.holder, config.attestation),
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        log.info(
            "noflylist: attestation %s, envelope %s, KMS %s (%s), credentials from %s",
            decryptor.mode,
            source.description,
            self.kms.endpoint,
            region,
            credentials.source,
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
        loader = threading.Thread(target=self._load_then_refresh, name="loader", daemon=True)
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

    def _load_then_refresh(self) -> None:
        pause = FIRST_LOAD_RETRY
        while not self._stop.is_set():
            try:
                self.holder.reload(only_if_changed=False)
                break
            except EnclaveError:
                log.info("retrying the first load in %.0f s", pause)  # cause logged already
            if self._wake.wait(timeout=pause):
                self._wake.clear()
            pause = min(pause * 2, FIRST_LOAD_RETRY_MAX)
        refresh_loop(self.holder, self.config.refresh_interval, self._stop, self._wake)


def _attestation_routes(
    module: SecureModule | None, holder: ListHolder, mode: str
) -> dict[str, RouteHandler]:
    """``GET /enclave/attestation`` where there is a module to attest with."""
    if module is None:
        return {}
    return {ATTESTATION_PATH: AttestationRoute(module, holder, mode=mode)}
