"""The verification core: every rule of RFC 8224/8225/8588 and ATIS-1000074/1000080, with no I/O.

Imports nothing outside the standard library, pyca/cryptography and itself.
"""
