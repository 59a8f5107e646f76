"""Retries with exponential backoff and full jitter, within an overall deadline.

AWS asks clients to back off on throttling and on server errors, and to add jitter so that
many clients retrying at once do not hit the service in step ("Exponential Backoff And
Jitter", AWS Architecture Blog). One call gets one deadline covering every attempt, so a
service start-up can never hang on an unreachable endpoint.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: First backoff ceiling; doubled after each failed attempt.
BASE_DELAY = 0.1
#: Ceiling on one backoff sleep, so a long deadline still gets several attempts.
MAX_DELAY = 5.0
#: Upper bound on attempts, even when the deadline would allow more.
MAX_ATTEMPTS = 10


class RetryableFailure(Exception):
    """Raised by an attempt to say "this failed, but trying again may help".

    ``error`` is what the caller sees if no later attempt succeeds.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry. The defaults suit KMS and S3 calls at start-up."""

    deadline: float = 30.0
    max_attempts: int = MAX_ATTEMPTS
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY


def call_with_retries(
    attempt: Callable[[float], T],
    policy: RetryPolicy,
    *,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[float, float], float] = random.uniform,
) -> T:
    """Run ``attempt(remaining_seconds)`` until it returns, raises a non-retryable error, or
    the policy's deadline or attempt count runs out.

    ``attempt`` raises :class:`RetryableFailure` wrapping the error for transient failures;
    any other exception propagates at once (client errors are not retried). When retries
    run out, the last wrapped error is re-raised with its message extended by how long and
    how often we tried, so one log line names both the cause and that retrying did not help.
    """
    start = clock()
    last: RetryableFailure | None = None
    attempts = 0
    for number in range(policy.max_attempts):
        remaining = policy.deadline - (clock() - start)
        if remaining <= 0:
            break
        attempts += 1
        try:
            return attempt(remaining)
        except RetryableFailure as failure:
            last = failure
        if number + 1 == policy.max_attempts:
            break  # no attempt follows, so no pause either
        ceiling = min(policy.max_delay, policy.base_delay * (2**number))
        delay = jitter(0.0, ceiling)
        if clock() - start + delay >= policy.deadline:
            break
        sleep(delay)
    assert last is not None, "deadline must be positive"
    error = last.error
    summary = (
        f"{describe} still failing after {attempts} attempts in {clock() - start:.1f} s "
        f"(deadline {policy.deadline:g} s)"
    )
    error.args = (f"{error.args[0] if error.args else error}; {summary}", *error.args[1:])
    raise error
