"""Ask a :class:`~noflylist.lists.ListHolder` about a name the way the routes do."""

from __future__ import annotations

from noflylist.decision import Listed, Refused, Unavailable, decide
from noflylist.lists import ListHolder


def screen(holder: ListHolder, name: str) -> bool | None:
    """Is ``name`` listed in what ``holder`` serves? ``None`` while no list is loaded (fail
    closed). Through :func:`noflylist.decision.decide`, one read of the list in service."""
    current = holder.current  # one read: a concurrent swap cannot split this lookup
    verdict = decide(current.table if current is not None else None, name)
    assert not isinstance(verdict, Refused), verdict.reason
    return None if isinstance(verdict, Unavailable) else isinstance(verdict, Listed)
