"""Reusable AWS Nitro Enclave plumbing: NSM device, attestation, KMS, SigV4, credentials, CMS.

Runtime dependencies: the Python standard library and ``cryptography``, nothing else.
"""
