"""verifier: a STIR/SHAKEN verification service (STI-VS)."""

from .__version__ import __version__
from .core.certs import CertificateInfo, Credential, TrustStore
from .core.errors import VerificationError
from .core.verify import CallInfo, Reason, Result, Verification, VerifyOptions, verify_offline

__all__ = [
    "CallInfo",
    "CertificateInfo",
    "Credential",
    "Reason",
    "Result",
    "TrustStore",
    "Verification",
    "VerificationError",
    "VerifyOptions",
    "__version__",
    "verify_offline",
]
