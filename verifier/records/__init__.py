"""Traceback records: one row per verification, kept as evidence, queried by number or SPC."""

from .sqlite import *  # noqa: F403
from .sqlite import __all__ as __all__
