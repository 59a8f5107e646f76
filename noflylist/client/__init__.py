"""What a client of the service runs to trust it; not in the enclave image.

:mod:`noflylist.client.attestation` verifies a Nitro attestation document (COSE_Sign1 over
CBOR, :mod:`noflylist.client.cose`) against the AWS Nitro Enclaves root that ships beside it,
``aws_nitro_root_g1.pem``, and the PCRs the caller expects. The enclave never verifies its
own documents, so none of this is imported by ``noflylist serve`` and none of it is copied
into the image (``.dockerignore``; the Dockerfile refuses a build that holds it).

:class:`Client` (:mod:`noflylist.client.client`) is the library for integrators: it attests
the service once per replica and accepts only answers the attested enclave signed for the
question asked (``docs/answers.md``); given a client key (:func:`load_client_key`, made
by ``noflylist client-key new``), it signs each screening request (``docs/deploy.md``,
"Who may ask"), and a refusal of who asks or how much raises :class:`AccessRefused`.
"""

from noflylist.client.client import (
    AccessRefused,
    AnswerNotVerified,
    AttestationFailed,
    Cleared,
    Client,
    ClientError,
    Listed,
    Refused,
    ServiceUnavailable,
    Unavailable,
    Verdict,
    load_client_key,
)

__all__ = [
    "AccessRefused",
    "AnswerNotVerified",
    "AttestationFailed",
    "Cleared",
    "Client",
    "ClientError",
    "Listed",
    "Refused",
    "ServiceUnavailable",
    "Unavailable",
    "Verdict",
    "load_client_key",
]
