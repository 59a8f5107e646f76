"""The one base class of every error this project raises on purpose.

Each module raises a single error type of its own, derived from :class:`NoflylistError`, so a
caller can catch "anything this project reports" without also catching programming errors.
"""


class NoflylistError(Exception):
    """Base of every error raised by the ``enclave`` and ``noflylist`` packages.

    Messages name the cause and, where there is one, the fix. They never carry secret
    material (keys, plaintext, listed or queried names).
    """
