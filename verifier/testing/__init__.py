"""Tools for tests, benchmarks and the demo: a test STI PKI and signer, a local certificate
repository, a fault proxy."""

from .pki import *  # noqa: F403
from .pki import __all__ as _pki_all
from .ports import free_port

__all__ = [*_pki_all, "free_port"]
