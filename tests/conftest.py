"""Shared pytest configuration. Fixtures that start real peers live in ``tests/support``."""

from __future__ import annotations

from pathlib import Path

#: Protocol vectors from independent producers, copied from the team's shared test data;
#: ``ORIGIN.md`` in that folder names each source and licence.
VECTORS = Path(__file__).resolve().parent / "vectors"

#: Fixtures that start real peers, shared by every test module that names them.
pytest_plugins = ["tests.support.moto_server", "tests.support.tinyproxy"]
