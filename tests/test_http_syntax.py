"""The HTTP grammar pieces of :mod:`enclave.http_syntax` match the RFCs' own definitions, for
every character, and are the only definition of the token grammar in the code."""

from __future__ import annotations

import http.client
import string
from pathlib import Path

import pytest

from enclave import http_syntax

ROOT = Path(__file__).resolve().parent.parent
#: RFC 9110 §5.6.2, as the RFC writes it: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" /
#: "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA.
RFC9110_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
#: RFC 5234 Appendix B.1: VCHAR = %x21-7E.
RFC5234_VCHAR = frozenset(chr(code) for code in range(0x21, 0x7F))
#: Modules that still hold their own copy of the token grammar: noflylist/transport, which
#: this change could not edit. Empty the set when they import enclave.http_syntax.
NOT_YET_SHARED: set[str] = set()


def test_token_accepts_exactly_rfc9110_tchar_for_every_latin1_character() -> None:
    for code in range(256):
        char = chr(code)
        expected = char in RFC9110_TCHAR
        assert (http_syntax.TOKEN.fullmatch(char) is not None) is expected, hex(code)
        assert (http_syntax.TOKEN_BYTES.fullmatch(bytes([code])) is not None) is expected
        assert (http_syntax.TOKEN.fullmatch("Name" + char) is not None) is expected
    assert http_syntax.TOKEN.fullmatch("") is None
    assert http_syntax.TOKEN_BYTES.fullmatch(b"") is None


def test_visible_ascii_accepts_exactly_rfc5234_vchar_for_every_latin1_character() -> None:
    for code in range(256):
        char = chr(code)
        assert (http_syntax.VISIBLE_ASCII.fullmatch(char) is not None) is (char in RFC5234_VCHAR)
    assert http_syntax.VISIBLE_ASCII.fullmatch("") is None
    assert http_syntax.VISIBLE_ASCII.fullmatch("AKIA EXAMPLE") is None


def test_default_ports_are_the_standard_librarys_and_cannot_be_changed() -> None:
    assert dict(http_syntax.DEFAULT_PORTS) == {
        "http": http.client.HTTP_PORT,
        "https": http.client.HTTPS_PORT,
    }
    with pytest.raises(TypeError):
        http_syntax.DEFAULT_PORTS["ftp"] = 21  # type: ignore[index]


def test_no_other_module_writes_out_the_token_grammar() -> None:
    copies = {
        str(path.relative_to(ROOT))
        for folder in ("enclave", "noflylist", "noflylist_simulator")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "http_syntax.py" and http_syntax.TCHAR in path.read_text()
    }
    assert copies == NOT_YET_SHARED
