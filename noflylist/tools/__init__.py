"""Operator and client tools; not in the enclave image.

What runs on an operator's or a third party's machine, never inside the enclave: reading and
measuring an Enclave Image Format file (:mod:`noflylist.tools.eif`), and building one
deterministically from the reproducible app image (:mod:`noflylist.tools.eif_build`). The
enclave never imports this package, so nothing here widens what the enclave runs.
"""
