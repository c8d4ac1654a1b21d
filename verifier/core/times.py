"""The one time parser: a point in time given as text, to epoch seconds. Pure.

Three forms, as callers meet them: epoch seconds (``1714564800``), an RFC 3339 date-time
with its UTC offset (``2024-05-01T12:00:00Z``: command line, query strings), and an
RFC 5322 / RFC 9110 date (``Wed, 01 May 2024 12:00:00 GMT``: SIP ``Date``, HTTP ``Expires``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math

__all__ = ["parse_time"]

_RANGE = (
    dt.datetime(1, 1, 2, tzinfo=dt.UTC).timestamp(),
    dt.datetime(9999, 12, 30, tzinfo=dt.UTC).timestamp(),
)


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds, an RFC 3339 date-time or an RFC 5322 date.

    Raises:
        ValueError: none of the three; a date-time without UTC offset; a time outside
            years 1-9999 ("nan" or "inf" would pass or break every time check after).
    """
    try:
        value = float(text)
    except ValueError:
        value = _date_time(text.strip())
    if not (math.isfinite(value) and _RANGE[0] <= value <= _RANGE[1]):
        raise ValueError("not a date-time in years 1-9999")
    return value


def _date_time(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        pass
    else:
        if when.tzinfo is None:
            raise ValueError("an RFC 3339 date-time needs a UTC offset or Z")
        return when.timestamp()
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise ValueError("not epoch seconds, an RFC 3339 date-time nor an RFC 5322 date") from None
