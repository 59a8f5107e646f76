"""An in-memory stand-in for KMS data keys, for tests of envelope handling only.

The real KMS path is proven elsewhere (moto in server mode, the local KMS of the simulator);
tests of the envelope format and the list holder only need "a data key and its blob".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from enclave.kms import DataKey, KMSError

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"


class FakeDataKeys:
    """``generate_data_key`` remembers each key by its blob; ``decrypt`` gives it back,
    checking key id and encryption context like KMS does."""

    def __init__(self) -> None:
        self._keys: dict[bytes, tuple[bytes, dict[str, str]]] = {}
        self.decrypt_calls = 0

    def generate_data_key(
        self, key_id: str, *, encryption_context: Mapping[str, str] | None = None
    ) -> DataKey:
        plaintext, blob = os.urandom(32), os.urandom(64)
        self._keys[blob] = (plaintext, dict(encryption_context or {}))
        return DataKey(KEY_ARN, blob, plaintext, None)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        self.decrypt_calls += 1
        if ciphertext_blob not in self._keys:
            raise KMSError("InvalidCiphertextException", code="InvalidCiphertextException")
        plaintext, context = self._keys[ciphertext_blob]
        if key_id not in (None, KEY_ARN):
            raise KMSError("IncorrectKeyException", code="IncorrectKeyException")
        if dict(encryption_context or {}) != context:
            raise KMSError("InvalidCiphertextException", code="InvalidCiphertextException")
        return plaintext
