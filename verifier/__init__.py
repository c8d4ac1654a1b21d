"""verifier: a STIR/SHAKEN verification service (STI-VS)."""

from .__version__ import __version__
from .certs import CertificateInfo, Credential, TrustStore
from .errors import VerificationError
from .verify import CallInfo, Reason, Result, Verification, VerifyOptions, verify_offline

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
