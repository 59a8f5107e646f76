"""What a client of the service runs to trust it; not in the enclave image.

:mod:`noflylist.client.attestation` verifies a Nitro attestation document (COSE_Sign1 over
CBOR, :mod:`noflylist.client.cose`) against the AWS Nitro Enclaves root that ships beside it,
``aws_nitro_root_g1.pem``, and the PCRs the caller expects. The enclave never verifies its
own documents, so none of this is imported by ``noflylist serve`` and none of it is copied
into the image (``.dockerignore``; the Dockerfile refuses a build that holds it).

:class:`Client` (:mod:`noflylist.client.client`) is the library for integrators: it attests
the service once per replica and accepts only answers the attested enclave signed for the
question asked (``docs/answers.md``).
"""

from noflylist.client.client import (
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
)

__all__ = [
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
]
