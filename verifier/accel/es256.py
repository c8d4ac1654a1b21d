"""ES256 (ECDSA P-256 with SHA-256) signature checks, faster for keys in heavy use.

An ECDSA check computes ``u1·G + u2·Q`` and compares its x-coordinate with ``r``. OpenSSL
keeps a precomputed table of multiples of the base point G, so ``u1·G`` is cheap, but it
computes ``u2·Q`` from scratch for every signature: most of a check's cost. A verifier sees
the same few signing keys over and over (one certificate signs all of a carrier's calls),
so for a key in heavy use this module builds the same kind of table for Q, once, and a
check becomes two fixed-base multiplications. The scalar inversion is GMP's (gmpy2) where
available; checks made together share one inversion (``check_many``), and ``x(X)`` is
compared in Jacobian coordinates (``X == r·Z²``), so no field inversion is needed.
``benchmarks/bench_core.py`` prints the pipeline both ways; RESULTS.md has the figures.

This module implements the core's ES256 protocol (:mod:`verifier.core.es256`): the service
hands :class:`ES256Key` to the trust store as its key factory and :func:`check_many` to
the batch pipeline; the core never imports this module.

How: a copy of OpenSSL's P-256 group whose generator is Q, for which
``EC_GROUP_precompute_mult`` builds the table (OpenSSL's own nistz256 code, the code that
holds G's table), called through :mod:`ctypes` in the libcrypto this interpreter already
has loaded. The arithmetic is all OpenSSL's; this module only strings the steps together.

The equation is ECDSA's (SEC 1 v2 §4.1.4, FIPS 186-5 §6.4.2): refuse ``r`` or ``s``
outside ``[1, n-1]``; ``e`` = SHA-256 of the message as an integer (n has 256 bits: no
truncation); ``w = s⁻¹ mod n``; ``X = (e·w mod n)·G + (r·w mod n)·Q``; accept iff X is not
the point at infinity and ``x(X) mod n == r``. Tests hold it to pyca/cryptography's
verdict on random keys, valid signatures and every kind of damaged one; and each table,
once built, must pass the signature that made its key hot, and refuse a damaged copy,
before it is used (else tables are turned off for the process, with an error logged).

Everything else goes through pyca/cryptography's ordinary check: a key not yet hot
(:data:`HOT_AFTER` verified checks), a table still being built (one at a time, on a
builder thread, with the GIL released), no usable libcrypto (:func:`unavailable` says
why), or tables turned off (``configure(max_tables=0)``). Tables are bounded: at most
``max_tables``; when they are all held, a key that turns hot gets a table only if it is
used clearly more often than the coldest held one (which then goes), so more hot keys
than tables do not take turns evicting each other. A table is freed only when nothing
refers to it any more, so a check running on another thread is never left with freed
memory. A signature that is not 64 bytes is refused on every path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import queue
import threading
from collections.abc import Sequence
from ctypes import c_char_p, c_int, c_size_t, c_void_p
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..core import es256 as protocol
from ..core.es256 import plain_check as _plain_check

__all__ = ["HOT_AFTER", "ES256Key", "check_many", "configure", "tables_in_use", "unavailable"]

log = logging.getLogger(__name__)

HOT_AFTER = 32
"""Checks with a key before its table is built."""

_HOTTER = 1.5
"""How much more often than the coldest held table's key a key must be used to take its
place (equal keys would otherwise displace each other on counting noise)."""

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF  # P-256 field prime
_NID_P256 = 415  # NID_X9_62_prime256v1
_sha256 = hashlib.sha256

try:
    from gmpy2 import invert as _gmp_invert
    from gmpy2 import mpz

    _GMP_N = mpz(_N)
except ImportError:  # pragma: no cover - a platform without gmpy2 wheels
    _gmp_invert = None


# ------------------------------------------------------------------------------ libcrypto


class _Lib:
    """The libcrypto functions used, typed for ctypes.

    The checks' functions keep the GIL (``ctypes.PyDLL``): each takes microseconds, and
    handing the GIL over and back several times per check cost more than it saved (another
    thread, the record writer's, takes it meanwhile). Building a table (``precompute``)
    releases it: that takes milliseconds, on a helper thread.
    """

    def __init__(self, path: str) -> None:
        keeps_gil, releases_gil = ctypes.PyDLL(path), ctypes.CDLL(path)

        def fn(name: str, restype: Any, *argtypes: Any, lib: ctypes.CDLL = keeps_gil) -> Any:
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = list(argtypes)
            return f

        p = c_void_p
        self.version_num = fn("OpenSSL_version_num", ctypes.c_ulong)
        self.group_by_name = fn("EC_GROUP_new_by_curve_name", p, c_int)
        self.group_dup = fn("EC_GROUP_dup", p, p)
        self.group_free = fn("EC_GROUP_free", None, p)
        self.group_order = fn("EC_GROUP_get0_order", p, p)
        self.group_cofactor = fn("EC_GROUP_get0_cofactor", p, p)
        self.set_generator = fn("EC_GROUP_set_generator", c_int, p, p, p, p)
        self.precompute = fn("EC_GROUP_precompute_mult", c_int, p, p, lib=releases_gil)
        self.point_new = fn("EC_POINT_new", p, p)
        self.point_free = fn("EC_POINT_free", None, p)
        self.oct2point = fn("EC_POINT_oct2point", c_int, p, p, c_char_p, c_size_t, p)
        self.mul = fn("EC_POINT_mul", c_int, p, p, p, p, p, p)
        self.add = fn("EC_POINT_add", c_int, p, p, p, p, p)
        # Jacobian X, Y, Z (normal form): comparing X with r·Z² needs no field inversion.
        self.jacobian = fn("EC_POINT_get_Jprojective_coordinates_GFp", c_int, p, p, p, p, p, p)
        self.bn_new = fn("BN_new", p)
        self.bn_free = fn("BN_free", None, p)
        self.bin2bn = fn("BN_bin2bn", p, c_char_p, c_int, p)
        self.bn2binpad = fn("BN_bn2binpad", c_int, p, c_char_p, c_int)
        self.mod_inverse = fn("BN_mod_inverse", p, p, p, p, p)
        self.ctx_new = fn("BN_CTX_new", p)
        self.ctx_free = fn("BN_CTX_free", None, p)


def _loaded_libcrypto() -> str | None:
    """The path of the libcrypto this process already maps (the one ``_hashlib`` uses)."""
    try:
        import _hashlib  # noqa: F401 - maps libcrypto into the process

        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").partition("/")[2]
                if path and "/libcrypto.so" in "/" + path:
                    return "/" + path
    except (ImportError, OSError):
        pass
    return ctypes.util.find_library("crypto")


def _load() -> tuple[_Lib | None, int, str]:
    """(library, P-256 group, why not) — the group is the standard one, G's table built in."""
    path = _loaded_libcrypto()
    if path is None:
        return None, 0, "no libcrypto found"
    try:
        lib = _Lib(path)
    except (OSError, AttributeError) as exc:
        return None, 0, f"{path}: {exc}"
    if lib.version_num() < 0x30000000:
        return None, 0, f"{path}: OpenSSL older than 3.0"
    group = lib.group_by_name(_NID_P256)
    if not group:
        return None, 0, f"{path}: no P-256 group"
    return lib, group, ""


_lib, _G, _why_not = _load()
_ORDER = _lib.group_order(_G) if _lib is not None else 0
_broken = ""  # set when a table failed its self-check: no more tables in this process


def unavailable() -> str:
    """Why keys get no tables in this process ("" when they do)."""
    return _why_not or _broken


class _Scratch:
    """One thread's OpenSSL working objects (a BN_CTX must not be shared between threads)."""

    def __init__(self) -> None:
        lib = _lib
        if lib is None:
            raise _TableError(_why_not)
        self.lib = lib
        self.ctx = lib.ctx_new()
        self.bns = self.u1, self.u2, self.s, self.w, self.x, self.z = tuple(
            lib.bn_new() for _ in range(6)
        )
        self.p1, self.p2 = lib.point_new(_G), lib.point_new(_G)
        self.out = ctypes.create_string_buffer(32)
        if not all((self.ctx, *self.bns, self.p1, self.p2)):
            raise MemoryError("OpenSSL allocation failed")

    def __del__(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is None:  # __init__ stopped before allocating anything
            return
        for bn in self.bns:
            lib.bn_free(bn)
        lib.point_free(self.p1)
        lib.point_free(self.p2)
        lib.ctx_free(self.ctx)


class _TableError(RuntimeError):
    """An OpenSSL call on the table path failed (not a verdict on the signature)."""


class _Table:
    """A P-256 group whose generator is one public key, with its precomputed table, and how
    often it is used: ``hits`` checks since the check count ``since`` (approximate: threads
    may lose an increment)."""

    __slots__ = ("group", "hits", "lib", "since")

    def __init__(self, point: bytes) -> None:
        lib = _lib
        if lib is None:
            raise _TableError(_why_not)
        self.lib = lib
        self.hits = 0
        self.since = 0
        self.group = lib.group_dup(_G)
        if not self.group:
            raise _TableError("EC_GROUP_dup failed")
        q = lib.point_new(_G)
        ctx = lib.ctx_new()
        try:
            if not (
                q
                and ctx
                and lib.oct2point(_G, q, point, len(point), ctx) == 1
                and lib.set_generator(self.group, q, _ORDER, lib.group_cofactor(_G)) == 1
                and lib.precompute(self.group, ctx) == 1
            ):
                raise _TableError("building the table failed")
        finally:
            lib.point_free(q)
            lib.ctx_free(ctx)

    def __del__(self) -> None:
        if getattr(self, "group", None):
            self.lib.group_free(self.group)

    def check(self, data: bytes, signature: bytes) -> bool:
        """One signature's verdict (with its own scalar inversion)."""
        return _table_checks([(self, data, signature)])[0]


def _scratch() -> _Scratch:
    k: _Scratch | None = getattr(_per_thread, "scratch", None)
    if k is None:
        k = _per_thread.scratch = _Scratch()
    return k


def _inverse(v: int, k: _Scratch) -> int:
    """``v⁻¹ mod n`` (v in [1, n-1]): GMP's, else OpenSSL's BN_mod_inverse (much slower: it
    is the largest part of a single check after the two multiplications)."""
    if _gmp_invert is not None:
        return int(_gmp_invert(v, _GMP_N))
    lib = k.lib
    lib.bin2bn(v.to_bytes(32, "big"), 32, k.s)
    if not lib.mod_inverse(k.w, k.s, _ORDER, k.ctx):
        raise _TableError("BN_mod_inverse failed")
    lib.bn2binpad(k.w, k.out, 32)
    return int.from_bytes(k.out.raw, "big")


def _inverses(values: list[int], k: _Scratch) -> list[int]:
    """``v⁻¹ mod n`` of each value (all in [1, n-1]): one inversion for all of them
    (Montgomery's trick: invert the product, then peel each factor off)."""
    prefix = []
    product = 1
    for v in values:
        product = product * v % _N
        prefix.append(product)
    inverse = _inverse(product, k)
    out = [0] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inverse * prefix[i - 1] % _N
        inverse = inverse * values[i] % _N
    out[0] = inverse
    return out


def _verdict(k: _Scratch, group: int, data: bytes, r: int, w: int) -> bool:
    """ECDSA's check with ``w = s⁻¹ mod n`` given and the key's table in ``group``."""
    lib, ctx, p1, x, z, out = k.lib, k.ctx, k.p1, k.x, k.z, k.out
    e = int.from_bytes(_sha256(data).digest(), "big")
    lib.bin2bn((e * w % _N).to_bytes(32, "big"), 32, k.u1)
    lib.bin2bn((r * w % _N).to_bytes(32, "big"), 32, k.u2)
    if not (
        lib.mul(_G, p1, k.u1, None, None, ctx) == 1
        and lib.mul(group, k.p2, k.u2, None, None, ctx) == 1
        and lib.add(_G, p1, p1, k.p2, ctx) == 1
        and lib.jacobian(_G, p1, x, None, z, ctx) == 1
    ):
        raise _TableError("EC_POINT arithmetic failed")
    lib.bn2binpad(z, out, 32)
    zz = int.from_bytes(out.raw, "big")
    if not zz:  # Z = 0: the point at infinity
        return False
    zz = zz * zz % _P
    lib.bn2binpad(x, out, 32)
    jx = int.from_bytes(out.raw, "big")
    # x(X) = jx / Z² (mod p); x(X) mod n == r  <=>  x(X) is r or r + n (x < p < 2n)
    return jx == r * zz % _P or (r + _N < _P and jx == (r + _N) * zz % _P)


def _table_checks(jobs: list[tuple[_Table, bytes, bytes]]) -> list[bool]:
    """Each job's verdict, the scalar inversions shared by all of them."""
    verdicts = [False] * len(jobs)
    live = []
    for i, (table, data, signature) in enumerate(jobs):
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if len(signature) == 64 and 0 < r < _N and 0 < s < _N:
            live.append((i, table.group, data, r, s))
    if not live:
        return verdicts
    k = _scratch()
    ws = _inverses([job[4] for job in live], k)
    for (i, group, data, r, _), w in zip(live, ws, strict=True):
        verdicts[i] = _verdict(k, group, data, r, w)
    return verdicts


_per_thread = threading.local()


# -------------------------------------------------------------------------------- tables


class _Tables:
    """The tables, by public key (X9.62 uncompressed point).

    Shared by every :class:`ES256Key` of the same key: a credential made again (a cache
    entry refreshed) finds its table built. ``checks`` counts the checks made through this
    module: the clock that use rates are measured by."""

    def __init__(self) -> None:
        self.max_tables = 64
        self.hot_after = HOT_AFTER
        self.by_point: dict[bytes, _Table] = {}
        self.building: set[bytes] = set()
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue[tuple[bytes, bytes, bytes, int]] = queue.SimpleQueue()
        self.builder: threading.Thread | None = None
        self.checks = 0
        self.built = 0
        """Tables admitted since the process started."""
        self.declined = 0
        """Keys turned hot that were refused a table: none held was colder."""

    def _rate(self, table: _Table) -> float:
        return table.hits / (self.checks - table.since + 1)

    def _coldest(self) -> tuple[bytes, _Table] | None:
        if not self.by_point:
            return None
        return min(self.by_point.items(), key=lambda item: self._rate(item[1]))

    def admit(self, point: bytes, table: _Table, span: int) -> None:
        """Hold ``table``, its key used ``hot_after`` times in the last ``span`` checks."""
        with self.lock:
            self.building.discard(point)
            if self.max_tables == 0 or _broken:
                return
            table.hits, table.since = self.hot_after, self.checks - span
            if len(self.by_point) >= self.max_tables:
                coldest = self._coldest()
                if coldest is not None and self._rate(coldest[1]) * _HOTTER >= self._rate(table):
                    self.declined += 1  # a held key got hotter while this table was built
                    return
            self.by_point[point] = table
            self.built += 1
            self._trim()

    def _trim(self) -> None:
        while len(self.by_point) > self.max_tables:
            coldest = self._coldest()
            if coldest is None:
                return
            del self.by_point[coldest[0]]

    def _forget_slowly(self, span: int) -> None:
        """Halve the history of tables held for more than ``4 * span`` checks, so that the
        coldest is judged by its recent use, on the scale of the candidate's."""
        for table in self.by_point.values():
            held = self.checks - table.since
            if held > 4 * span:
                table.hits //= 2
                table.since = self.checks - held // 2

    def build_later(self, point: bytes, data: bytes, signature: bytes, span: int) -> None:
        """Queue ``point``'s table for the builder thread unless it is there or on its way,
        or every table is held by a key used about as often (``hot_after`` uses in ``span``
        checks) or more.

        One builder, one table at a time: a burst of keys turning hot at once (a restart
        under load) takes one core for a while, not all of them."""
        with self.lock:
            if point in self.by_point or point in self.building or self.max_tables == 0:
                return
            if len(self.by_point) + len(self.building) >= self.max_tables:
                self._forget_slowly(span)
                coldest = self._coldest()
                rate = self.hot_after / (span + 1)
                if coldest is None or self._rate(coldest[1]) * _HOTTER >= rate:
                    self.declined += 1
                    return
            self.building.add(point)
            if self.builder is None or not self.builder.is_alive():
                self.builder = threading.Thread(
                    target=self._build_queued, name="es256-tables", daemon=True
                )
                self.builder.start()
        self.queue.put((point, data, signature, span))

    def _build_queued(self) -> None:
        while True:
            point, data, signature, span = self.queue.get()
            try:
                _build(point, data, signature, span)
            except Exception:  # a bug must not stop the builder: that key stays plain
                log.exception("building an ES256 table failed")
                with self.lock:
                    self.building.discard(point)


_tables = _Tables()


def _build(point: bytes, data: bytes, signature: bytes, span: int = 0) -> None:
    """Build a table, prove it on a known-good and a damaged signature, admit it."""
    try:
        table = _Table(point)
        damaged = bytearray(signature)
        damaged[-1] ^= 1
        if not table.check(data, signature) or table.check(data, bytes(damaged)):
            _disable("a new table disagreed with the plain check on a known signature")
            return
    except (_TableError, MemoryError) as exc:
        log.warning("no ES256 table for a key: %s", exc)
        with _tables.lock:
            _tables.building.discard(point)
        return
    _tables.admit(point, table, span)


def configure(*, max_tables: int = 64, hot_after: int = HOT_AFTER) -> None:
    """At most ``max_tables`` keys hold a table (0: none), each built after ``hot_after``
    checks. Tables beyond the new bound are dropped at once."""
    if max_tables < 0 or hot_after < 1:
        raise ValueError("max_tables must be >= 0 and hot_after >= 1")
    with _tables.lock:
        _tables.max_tables = max_tables
        _tables.hot_after = hot_after
        _tables._trim()


def tables_in_use() -> int:
    """Keys that hold a table now."""
    return len(_tables.by_point)


def _disable(why: str) -> None:
    global _broken
    with _tables.lock:
        if not _broken:
            _broken = why
            log.error("ES256 tables turned off for this process: %s", why)
        _tables.by_point.clear()


# ------------------------------------------------------------------------------------ keys


class ES256Key:
    """One public key's ES256 check: ``key.check(signing_input, signature)`` -> bool; the
    core's :class:`~verifier.core.es256.ES256Key` with a table once the key is hot.

    ``signature`` is the raw 64-byte R||S of RFC 7518 §3.4. Thread-safe.
    """

    __slots__ = ("_first", "_point", "_uses", "public_key")

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self.public_key = public_key
        self._uses = 0
        self._first = 0
        """The module's check count at the first of the uses counted."""
        # The tables' key: a credential made again (a cache entry refreshed) finds the
        # table of its key at once. None: not a P-256 key, it never gets one.
        self._point: bytes | None = None
        if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        ):
            self._point = public_key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )

    def check(self, data: bytes, signature: bytes) -> bool:
        return check_many([(self, data, signature)])[0]

    def has_table(self) -> bool:
        """Whether the key's checks use its table now."""
        return self._point is not None and self._point in _tables.by_point

    def _table(self) -> _Table | None:
        """The key's table when it has one (and mark it used)."""
        point = self._point
        if point is None:
            return None
        table = _tables.by_point.get(point)
        if table is not None:
            table.hits += 1
        return table

    def _plain(self, data: bytes, signature: bytes) -> bool:
        """pyca/cryptography's check, counting the key's uses until it is hot."""
        ok = _plain_check(self.public_key, data, signature)
        if ok:
            if self._uses == 0:
                self._first = _tables.checks
            self._uses += 1
            if self._uses >= _tables.hot_after:
                self._uses = 0
                self._hot(data, signature, _tables.checks - self._first)
        return ok

    def _hot(self, data: bytes, signature: bytes, span: int) -> None:
        if self._point is None or _tables.max_tables == 0 or unavailable():
            return
        _tables.build_later(self._point, data, signature, span)


def check_many(jobs: Sequence[tuple[protocol.ES256Key, bytes, bytes]]) -> list[bool]:
    """Each ``(key, signing_input, signature)``'s verdict, as its ``check`` gives it (the
    core's :data:`~verifier.core.es256.BatchCheck`); the checks with a table share one
    scalar inversion. A key that is not this module's is checked by its own ``check``."""
    verdicts = [False] * len(jobs)
    tabled: list[tuple[_Table, bytes, bytes]] = []
    where: list[int] = []
    _tables.checks += len(jobs)
    for i, (key, data, signature) in enumerate(jobs):
        if len(signature) != 64:  # RFC 7518 §3.4: R||S, 32 bytes each; nothing else
            continue
        if not isinstance(key, ES256Key):
            verdicts[i] = key.check(data, signature)
            continue
        table = key._table()
        if table is None:
            verdicts[i] = key._plain(data, signature)
        else:
            tabled.append((table, data, signature))
            where.append(i)
    if tabled:
        try:
            for i, ok in zip(where, _table_checks(tabled), strict=True):
                verdicts[i] = ok
        except _TableError as exc:  # not a verdict: the plain check gives it
            _disable(f"a table check failed: {exc}")
            for i in where:
                key, data, signature = jobs[i]
                if isinstance(key, ES256Key):
                    verdicts[i] = _plain_check(key.public_key, data, signature)
    return verdicts
