"""HTTP's small grammar pieces that several modules check, each defined once.

The enclave's HTTP client (:mod:`enclave.http_client`), the SigV4 signer
(:mod:`enclave.sigv4`), the credential sources (:mod:`enclave.credentials`,
:mod:`enclave.imds`) and the service's request framer and server (``noflylist.transport``)
all check names and values against the same rules; one definition here means a fix to one
reaches all of them. Standard library only (``re``), so any of them may import it.
"""

from __future__ import annotations

import re
from types import MappingProxyType

__all__ = ["DEFAULT_PORTS", "FIELD_CONTROL", "TCHAR", "TOKEN", "TOKEN_BYTES", "VISIBLE_ASCII"]

#: RFC 9110 §5.6.2 ``tchar``: the characters of a token (method and field names), as a regular
#: expression character class, for patterns that need it with another repeat.
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: RFC 9110 §5.6.2 ``token = 1*tchar``, for text (``fullmatch`` it).
TOKEN = re.compile(TCHAR + "+")
#: The same, for bytes read off a socket.
TOKEN_BYTES = re.compile(TCHAR.encode("ascii") + b"+")
#: RFC 5234 ``1*VCHAR``: visible ASCII, no space, tab, CR, LF or NUL. What a key, secret or
#: token may hold to be sent in a header without quoting or splitting it.
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: RFC 9110 §5.5: the characters a field value may not hold (controls but HTAB, and DEL), as a
#: character class: the request framer checks bytes with it, the signature verifier text.
FIELD_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f]"
#: RFC 9110 §4.2.1 and §4.2.2: the port a URL of each scheme we speak means when it names none.
DEFAULT_PORTS = MappingProxyType({"http": 80, "https": 443})
