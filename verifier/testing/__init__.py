"""Tools for tests, benchmarks and the demo: a test STI PKI and signer, a local certificate
repository, a fault proxy."""

from .pki import *  # noqa: F403
from .pki import __all__ as __all__
