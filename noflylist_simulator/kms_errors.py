"""The one error type of the local KMS (development and tests only).

The local KMS is split by concern (:mod:`~noflylist_simulator.kms_state`,
:mod:`~noflylist_simulator.kms_auth`, :mod:`~noflylist_simulator.kms_blob`,
:mod:`~noflylist_simulator.kms_grants`,
:mod:`~noflylist_simulator.kms_actions`, :mod:`~noflylist_simulator.kms_server`), but it is one
component with one error type: the server turns an error with a ``code`` into KMS's HTTP 400
answer, and one without into a 500 (unusable state). Callers import it from
:mod:`noflylist_simulator.kms_server`.
"""

from __future__ import annotations

from enclave.errors import NoflylistError

__all__ = ["LocalKMSError", "fault"]


class LocalKMSError(NoflylistError):
    """A request the local KMS refuses (``code`` is KMS's error code), or unusable state."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def fault(code: str, message: str) -> LocalKMSError:
    """A refusal with KMS's error ``code``, answered as HTTP 400 ``{"__type": code}``."""
    return LocalKMSError(message, code=code)
