"""The verification core: every rule of RFC 8224/8225/8588 and ATIS-1000074/1000080, with no I/O.

Imports nothing outside the standard library, pyca/cryptography and itself
(tests/test_layers.py holds it to that). Modules: errors, tn (numbers and the call's
parties), identity, passport, x5u, certs, es256 (the ES256 check protocol; accelerators
are handed in), result, div (RFC 8946 chain), verify (the pipeline), policy, sip, times,
replay.
"""
