"""Operator and list-owner tools; not in the enclave image.

What runs on an operator's, a list owner's or an auditor's machine, never inside the
enclave: sealing a list (:mod:`noflylist.tools.seal`), the KMS key policy
(:mod:`noflylist.tools.policy`), checking a running service (:mod:`noflylist.tools.trust`),
the local demo (:mod:`noflylist.tools.demo`), and reading, measuring and deterministically
building an Enclave Image Format file (:mod:`noflylist.tools.eif`, ``eif_build``). The
command line loads each of these only when its command runs (:mod:`noflylist.tools.commands`),
so ``noflylist serve`` imports none of them and the image holds none of them.
"""
