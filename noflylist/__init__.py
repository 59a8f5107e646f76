"""noflylist: screen passengers against a secret no-fly list from inside an AWS Nitro Enclave.

The decision logic lives in :mod:`noflylist.table`; everything that talks to the
Nitro Secure Module or to AWS lives in the separate, reusable :mod:`enclave` package.
"""

__version__ = "0.1.0"
