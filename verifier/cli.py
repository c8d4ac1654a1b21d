"""Command line: ``verifier verify | sign | pki init | demo | serve | records | config | trust``.

Exit status: 0 passed (or the command succeeded), 1 verification not passed, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__
from .core import times
from .core.certs import TrustStore
from .core.errors import VerifierError
from .core.verify import CallInfo, Result, VerifyOptions, verify, verify_offline
from .core.x5u import DEFAULT_X5U_PORTS
from .logs import configure_logging
from .net.fetch import CertificateFetcher
from .net.transport import HttpClientSettings
from .net.trustlist import local_anchors
from .testing.pki import identity_header, sign_jws, write_pki

if TYPE_CHECKING:
    from .records import RecordQuery, RecordStore
    from .settings import Settings

__all__ = ["main"]

DEFAULT_TRUST = Path("certs")


class UsageError(VerifierError):
    """A bad command line or an unreadable input file: exit status 2."""


def parse_time(text: str) -> float:
    """Epoch seconds, or an RFC 3339 date-time (``2024-05-01T12:00:00Z``)."""
    try:
        return times.parse_time(text)
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: {exc}") from None


def _read_identity(arg: str) -> list[str]:
    if arg == "-":
        text = sys.stdin.read()
    elif arg.startswith("@"):
        try:
            text = Path(arg[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {arg[1:]}: {exc.strerror}") from None
    else:
        return [arg]
    values = [line.strip() for line in text.splitlines() if line.strip()]
    # A pasted SIP header line "Identity: ..." is accepted as well as a bare value.
    return [v.split(":", 1)[1].strip() if v.lower().startswith("identity:") else v for v in values]


def _read_pem_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def _load_trust(paths: Sequence[str], require_policy_oid: bool) -> TrustStore:
    chosen = list(paths) or ([str(DEFAULT_TRUST)] if DEFAULT_TRUST.is_dir() else [])
    if not chosen:
        raise UsageError("no trust anchors: give --trust-anchor PEM|DIR")
    try:
        return TrustStore.from_paths(chosen, require_policy_oid=require_policy_oid)
    except ValueError as exc:
        raise UsageError(f"trust anchors: {exc}") from None


def _print_human(result: Result) -> None:
    for h in result.identities:
        line = f"[{h.index}] ppt={h.ppt or '?'} {h.status}"
        if h.reason is not None:
            line += f": {h.reason.sip_code} {h.reason.text} ({h.reason.slug}) {h.reason.detail}"
        print(line)
    summary = f"verstat={result.verstat}"
    if result.attest:
        summary += f" attest={result.attest}"
    if result.certificate is not None:
        summary += f" spc={','.join(result.certificate.spc)}"
    if result.reason is not None:
        summary += f" reason={result.reason.sip_code} {result.reason.text} ({result.reason.slug})"
        if not result.identities:
            summary += f": {result.reason.detail}"
    print(summary)
    for warning in result.warnings:
        print(f"warning: {warning}")


def cmd_verify(args: argparse.Namespace) -> int:
    values = _read_identity(args.identity)
    now = parse_time(args.at) if args.at else time.time()
    ports = frozenset(args.x5u_port) if args.x5u_port else DEFAULT_X5U_PORTS
    options = VerifyOptions(
        max_iat_age=args.max_iat_age, max_future_skew=args.max_future_skew, x5u_ports=ports
    )
    call = CallInfo(from_=args.orig, to=args.dest)
    if args.cert and args.key:
        raise UsageError("give --cert or --key, not both")
    if args.key:
        data = _read_pem_file(args.key, "key")
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, None).public_key()
            except (ValueError, TypeError) as exc:
                raise UsageError(f"{args.key}: not a PEM public or private key ({exc})") from None
        result = verify_offline(
            values, now=now, call=call, options=options, public_key=key, bare=args.bare
        )
    elif args.cert:
        data = _read_pem_file(args.cert, "certificate")
        try:
            chain = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise UsageError(f"{args.cert}: no PEM certificate ({exc})") from None
        trust = _load_trust(args.trust_anchor, args.require_policy_oid)
        result = verify_offline(
            values, now=now, call=call, options=options, chain=chain, trust=trust, bare=args.bare
        )
    else:
        if args.bare:
            raise UsageError("--bare needs --cert or --key (a bare PASSporT has no info)")
        trust = _load_trust(args.trust_anchor, args.require_policy_oid)
        client = HttpClientSettings(
            ports=ports, ca_file=args.x5u_ca_file, allow_private=args.allow_private_x5u
        )
        result = asyncio.run(_verify_online(values, now, call, options, trust, client))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_human(result)
    return 0 if result.passed else 1


async def _verify_online(
    values: list[str],
    now: float,
    call: CallInfo,
    options: VerifyOptions,
    trust: TrustStore,
    client: HttpClientSettings,
) -> Result:
    """Verify by fetching each x5u with the fetch rules (verifier.net.fetch)."""
    async with CertificateFetcher(trust, client=client) as fetcher:
        return await verify(values, now=now, credentials=fetcher, call=call, options=options)


def cmd_sign(args: argparse.Namespace) -> int:
    data = _read_pem_file(args.key, "key")
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{args.key}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"{args.key}: ES256 needs an EC P-256 key")
    header = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": args.x5u}
    claims = {
        "attest": args.attest,
        "dest": {"tn": args.dest},
        "iat": int(time.time()) if args.iat is None else args.iat,
        "orig": {"tn": args.orig},
        "origid": args.origid or _uuid(),
    }
    identity = identity_header(sign_jws(key, header, claims), args.x5u)
    if args.atis_request:
        request = {
            "verificationRequest": {
                "from": {"tn": args.orig},
                "to": {"tn": args.atis_to or args.dest},
                "time": int(time.time()),
                "identity": identity,
            }
        }
        print(json.dumps(request))
    else:
        print(identity)
    return 0


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def cmd_pki_init(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if (out / "root.pem").exists() and not args.force:
        raise UsageError(f"{out}/root.pem exists; use --force to replace the PKI")
    write_pki(out, x5u_base=args.x5u_base.rstrip("/"))
    print(f"test PKI written to {out}/ (trust anchor root.pem, signer sp.pem + sp.key)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .testing.demo import run_demo

    configure_logging("WARNING")
    return run_demo(args.dir, args.host, args.port)


def cmd_serve(args: argparse.Namespace) -> int:
    from .settings import ConfigError, load_settings

    overrides: dict[str, object] = {}
    for name in ("host", "port", "workers"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.trust_anchor:
        overrides["trust_anchors"] = args.trust_anchor
    if args.x5u_ca_file:
        overrides["http_client.ca_file"] = args.x5u_ca_file
    if args.allow_private_x5u:
        overrides["http_client.allow_private"] = True
    for flag, key in (
        ("redis_url", "redis.url"),
        ("database_url", "records.database_url"),
        ("policy", "policy_file"),
    ):
        if getattr(args, flag):
            overrides[key] = getattr(args, flag)
    if args.keepalive_timeout is not None:
        overrides["keepalive_timeout"] = args.keepalive_timeout
    if args.trust_list_url:
        overrides["trust.list_url"] = args.trust_list_url
    if args.sip_listen:
        overrides["sip.listen"] = list(args.sip_listen)
    try:
        settings = load_settings(args.config, env=os.environ, overrides=overrides)
        listed = settings.trust.list_url is not None
        anchors = local_anchors(settings.trust_anchors, optional=listed)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not anchors and not listed:
        raise UsageError("no trust anchors: give --trust-anchor PEM|DIR or --trust-list-url")
    configure_logging(settings.log_level)
    if settings.workers > 1 and not args.worker:
        from .workers import supervise

        argv = [a for a in (args.argv or []) if a != "--worker"]
        return supervise(argv, settings.workers, settings.shutdown_timeout)
    from .http.app import run

    run(settings, reuse_port=args.worker)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Load the configuration as ``serve`` would (file, environment), trust anchors and
    policy included, and print it in the file's layout with secrets masked."""
    from .core.policy import Policy
    from .settings import ConfigError, load_settings
    from .settings_text import effective_toml

    try:
        settings = load_settings(args.config, env=os.environ)
        listed = settings.trust.list_url is not None
        anchors = local_anchors(settings.trust_anchors, optional=listed)
        if settings.policy_file is not None:
            Policy.load(settings.policy_file)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    if not anchors and not listed:
        raise UsageError("no trust anchors: give trust_anchors PEM files or directories")
    sys.stdout.write(effective_toml(settings))
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Print the Markdown reference of every key, or rewrite it in FILE between its markers."""
    from .settings import ConfigError
    from .settings_text import reference, update_reference

    if args.update is None:
        print(reference())
        return 0
    path = Path(args.update)
    try:
        text = path.read_text(encoding="utf-8")
        updated = update_reference(text)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ConfigError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    if updated == text:
        print(f"{path}: the configuration reference is up to date")
    else:
        path.write_text(updated, encoding="utf-8")
        print(f"{path}: the configuration reference was rewritten")
    return 0


def cmd_records(args: argparse.Namespace) -> int:
    """Query the traceback records in a data directory or a PostgreSQL database (read-only)."""
    from .core.tn import canonical_tn
    from .records import RecordQuery, SqliteRecordStore, csv_header, to_csv_rows

    def when(option: str, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            return parse_time(text)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--at", option, 1)) from None

    def number(text: str | None) -> str | None:
        return None if text is None else canonical_tn(text) or text

    since, until = when("--since", args.since), when("--until", args.until)
    filters = (args.origid, args.orig, args.dest, args.spc, args.cursor, args.limit)
    if args.stats and any(f is not None for f in filters):
        raise UsageError("--stats takes only --since and --until")
    if args.reverify and (args.stats or args.csv):
        raise UsageError("--reverify prints its own report (with --json: as JSON)")
    if not args.reverify and (args.config is not None or args.trust_anchor):
        raise UsageError("--config and --trust-anchor go with --reverify")
    query = RecordQuery(
        origid=args.origid,
        orig=number(args.orig),
        dest=number(args.dest),
        spc=args.spc,
        since=since,
        until=until,
        limit=100 if args.limit is None else args.limit,
        cursor=args.cursor,
    )
    store: RecordStore
    unreadable: tuple[type[Exception], ...] = (sqlite3.Error,)
    if args.database_url is not None:
        import psycopg

        from .records.postgres import PostgresRecordStore

        unreadable = (psycopg.Error,)
        store = PostgresRecordStore.open(args.database_url, create=False)
    else:
        try:
            store = SqliteRecordStore.open(args.data_dir, create=False)
        except FileNotFoundError:
            raise UsageError(f"no records in {args.data_dir}/ (give --data-dir DIR)") from None
    try:
        if args.reverify:
            return _reverify(args, store, query)
        if args.stats:
            print(json.dumps(store.stats(since, until), indent=2))
        elif args.csv:
            sys.stdout.write(csv_header())
            for chunk in store.iter_query(query):
                sys.stdout.writelines(to_csv_rows(chunk))
        else:
            records, cursor = store.query(query)
            if args.json:
                body = {"records": [r.to_dict() for r in records], "next_cursor": cursor}
                print(json.dumps(body, indent=2))
            else:
                for r in records:
                    stamp = dt.datetime.fromtimestamp(r.ts, dt.UTC).isoformat(timespec="seconds")
                    line = f"{stamp.replace('+00:00', 'Z')} {r.endpoint} {r.verstat}"
                    for name in ("attest", "orig", "dest", "origid", "reason", "sip_code"):
                        value = getattr(r, name)
                        if value is not None:
                            line += f" {name}={value}"
                    if r.spc:
                        line += f" spc={','.join(r.spc)}"
                    for name in ("action", "label", "request_id"):
                        value = getattr(r, name)
                        if value is not None:
                            line += f" {name}={value}"
                    print(line)
                if cursor is not None:
                    print(f"next cursor: {cursor}")
    except unreadable as exc:  # a locked, damaged or unreachable store: one line, no traceback
        print(f"verifier: error: the records could not be read: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _reverify(args: argparse.Namespace, store: RecordStore, query: RecordQuery) -> int:
    """``records --reverify``: every matching record verified again from the store alone;
    exit status 1 when any verdict differs."""
    from .records.reverify import reverify
    from .settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config, env=os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.trust_anchor:
        trust = _load_trust(args.trust_anchor, settings.verification.require_policy_oid)
    else:
        trust = _configured_trust(settings)
    # Nothing is fetched: the x5u port allow-list guards fetches, and a recorded chain's x5u
    # passed the service's own list when it was fetched.
    options = dataclasses.replace(settings.options, x5u_ports=frozenset(range(1, 65536)))
    counts = {"same": 0, "different": 0, "no_identity": 0, "no_chain": 0, "request_date": 0}
    results = []
    for chunk in store.iter_query(query):
        chains = store.chains(
            fingerprint
            for r in chunk
            if r.identity
            for fingerprint in (r.fingerprint, *(r.signers or {}).values())
            if fingerprint
        )
        for item in reverify(chunk, chains, trust, options):
            counts[item.status] += 1
            if args.json:
                results.append(item.to_dict())
            else:
                print(item.line())
    if args.json:
        print(json.dumps({"results": results, "counts": counts}, indent=2))
    else:
        print(" ".join(f"{name}={n}" for name, n in counts.items()))
    return 1 if counts["different"] else 0


def _configured_trust(settings: Settings) -> TrustStore:
    """The service's anchors: ``trust_anchors`` and the cached STI-PA list (no fetch)."""
    from .net.trustlist import TrustList

    listed: tuple[x509.Certificate, ...] = ()
    try:
        if settings.trust.list_url is not None:
            trust_list = TrustList(
                settings.trust,
                settings.http_client,
                data_dir=settings.records.data_dir,
                clock=time.time,
            )
            trust_list.load_cache()
            listed = trust_list.anchors
        local = local_anchors(settings.trust_anchors, optional=bool(listed))
        given = set(local)
        return TrustStore(
            [*local, *(a for a in listed if a not in given)],
            require_policy_oid=settings.verification.require_policy_oid,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"trust anchors: {exc}") from None


def _fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """The trust and x5u options that ``verify`` and ``serve`` share."""
    parser.add_argument(
        "--trust-anchor",
        action="append",
        default=[],
        metavar="PEM|DIR",
        help="trust anchor PEM file or directory (repeatable; default ./certs)",
    )
    parser.add_argument(
        "--x5u-ca-file",
        metavar="PEM",
        help="CA bundle for TLS to x5u repositories (default: the system trust store)",
    )
    parser.add_argument(
        "--allow-private-x5u",
        action="store_true",
        help="allow x5u hosts on loopback, private and link-local addresses (testing only)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verifier", description="STIR/SHAKEN verification service"
    )
    parser.add_argument("--version", action="version", version=f"verifier {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="verify Identity header values offline or by fetching x5u")
    v.add_argument(
        "identity", help="an Identity header value, @FILE (one value a line) or - for stdin"
    )
    v.add_argument(
        "--cert", help="PEM with the signer's certificate (+ intermediates), instead of x5u"
    )
    v.add_argument("--key", help="a bare PEM public key: check the PASSporT only, no certificate")
    _fetch_arguments(v)
    v.add_argument("--at", help="verify as of this moment: epoch seconds or RFC 3339")
    v.add_argument("--orig", help="the calling number (From / P-Asserted-Identity)")
    v.add_argument("--dest", help="the called number (To / Request-URI)")
    v.add_argument(
        "--bare", action="store_true", help="the input is a bare PASSporT, not an Identity header"
    )
    v.add_argument(
        "--require-policy-oid",
        action="store_true",
        help="refuse certificates without the SHAKEN policy OID",
    )
    v.add_argument("--max-iat-age", type=float, default=60.0, metavar="S")
    v.add_argument("--max-future-skew", type=float, default=10.0, metavar="S")
    v.add_argument("--json", action="store_true", help="print the result object as JSON")
    v.add_argument(
        "--x5u-port",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="a port x5u may use (repeatable; default 443 and 8443)",
    )
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("sign", help="sign an Identity header value (testing)")
    s.add_argument("--key", required=True, help="EC P-256 private key PEM")
    s.add_argument("--x5u", required=True)
    s.add_argument("--orig", required=True)
    s.add_argument("--dest", required=True, action="append")
    s.add_argument("--attest", choices=["A", "B", "C"], default="A")
    s.add_argument("--iat", type=int)
    s.add_argument("--origid")
    s.add_argument(
        "--atis-request",
        action="store_true",
        help="print a whole ATIS-1000082 verificationRequest body, not just the header",
    )
    s.add_argument(
        "--atis-to",
        action="append",
        metavar="TN",
        help="with --atis-request: the called number(s) asked about (default: --dest)",
    )
    s.set_defaults(func=cmd_sign)

    p = sub.add_parser("pki", help="test PKI")
    psub = p.add_subparsers(dest="pki_command", required=True)
    pi = psub.add_parser("init", help="write a test PKI to DIR")
    pi.add_argument("dir")
    pi.add_argument("--x5u-base", default="https://127.0.0.1:8443")
    pi.add_argument("--force", action="store_true")
    pi.set_defaults(func=cmd_pki_init)

    d = sub.add_parser(
        "demo", help="run the service with a dev PKI and a local certificate repository"
    )
    d.add_argument("--dir", default="certs/dev", help="where the dev PKI lives (default certs/dev)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="run the verification service")
    sv.add_argument("--config", metavar="FILE", help="TOML configuration file")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    _fetch_arguments(sv)
    sv.add_argument("--workers", type=int, help="worker processes on one port (SO_REUSEPORT)")
    sv.add_argument("--policy", metavar="FILE", help="disposition policy (TOML)")
    sv.add_argument(
        "--trust-list-url", metavar="URL", help="the STI-PA trust list ([trust] list_url)"
    )
    sv.add_argument(
        "--redis-url",
        metavar="URL",
        help="shared certificate tier and replay set for many instances (redis://...)",
    )
    sv.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL for the traceback records (postgresql://...); default SQLite in data/",
    )
    sv.add_argument(
        "--keepalive-timeout",
        type=float,
        metavar="S",
        help="seconds an idle keep-alive connection stays open (keepalive_timeout)",
    )
    sv.add_argument(
        "--sip-listen",
        action="append",
        metavar="TRANSPORT:HOST:PORT",
        help="also answer SIP INVITEs by 302 redirect, e.g. udp:127.0.0.1:5060 (repeatable)",
    )
    sv.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    sv.set_defaults(func=cmd_serve)
    r = sub.add_parser("records", help="query the traceback records (SQLite or PostgreSQL)")
    r.add_argument("--data-dir", default="data", metavar="DIR", help="default: ./data")
    r.add_argument(
        "--database-url",
        metavar="URL",
        help="read PostgreSQL instead of --data-dir: postgresql://user@host:5432/db"
        " (password: PGPASSWORD or ~/.pgpass, not the command line)",
    )
    r.add_argument("--origid", metavar="X", help="the PASSporT origid")
    r.add_argument("--orig", metavar="TN", help="the calling number")
    r.add_argument("--dest", metavar="TN", help="the called number")
    r.add_argument("--spc", metavar="S", help="the signer's SPC")
    r.add_argument("--since", metavar="TIME", help="from (inclusive): epoch seconds or RFC 3339")
    r.add_argument("--until", metavar="TIME", help="to (exclusive): epoch seconds or RFC 3339")
    r.add_argument("--limit", type=int, metavar="N", help="records in one page (default 100)")
    r.add_argument("--cursor", metavar="C", help="the next cursor printed by the previous page")
    out = r.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="every matching record as CSV")
    out.add_argument("--stats", action="store_true", help="counts for the time window (JSON)")
    out.add_argument("--json", action="store_true", help="the page (or --reverify) as JSON")
    r.add_argument(
        "--reverify",
        action="store_true",
        help="verify every matching record again as of its own time, from the store alone"
        " (exit status 1 when a verdict differs)",
    )
    r.add_argument(
        "--config",
        metavar="FILE",
        help="with --reverify: the service's configuration (trust anchors, verification)",
    )
    r.add_argument(
        "--trust-anchor",
        action="append",
        default=[],
        metavar="PEM|DIR",
        help="with --reverify: these trust anchors instead of the configured ones",
    )
    r.set_defaults(func=cmd_records)

    c = sub.add_parser("config", help="check the configuration or print its reference")
    csub = c.add_subparsers(dest="config_command", required=True)
    cc = csub.add_parser(
        "check",
        help="validate the configuration as `serve` reads it (file and VERIFIER_* variables)"
        " and print the effective values, secrets masked; exit 2 if it is invalid",
    )
    cc.add_argument("--config", metavar="FILE", help="TOML configuration file")
    cc.set_defaults(func=cmd_config_check)
    cr = csub.add_parser("reference", help="the Markdown table of every key (README.md)")
    cr.add_argument(
        "--update", metavar="FILE", help="rewrite the block between FILE's reference markers"
    )
    cr.set_defaults(func=cmd_config_reference)

    t = sub.add_parser("trust", help="the trust anchors in force; refresh the STI-PA list")
    tsub = t.add_subparsers(dest="trust_command", required=True)
    for name, text in (
        ("status", "print the anchors (local and cached list) as JSON"),
        ("refresh", "fetch the STI-PA trust list now"),
    ):
        tp = tsub.add_parser(name, help=text)
        tp.add_argument("--config", metavar="FILE", help="TOML configuration file")
        tp.add_argument(
            "--service",
            metavar="URL",
            help="a running service (http://127.0.0.1:8080): ask it, with the admin token"
            " (VERIFIER_API_ADMIN_TOKEN); without: read or write the cache file",
        )
        tp.set_defaults(func=cmd_trust)
    return parser


def cmd_trust(args: argparse.Namespace) -> int:
    """``verifier trust status|refresh`` (:mod:`verifier.trust_cli`)."""
    from .trust_cli import refresh, status

    return status(args) if args.trust_command == "status" else refresh(args)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe raises here, not at exit
    except BrokenPipeError:
        # The reader left (`verifier records ... | head`): quiet, as the signal module's
        # docs advise; stdout goes to devnull so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except UsageError as exc:
        print(f"verifier: error: {exc}", file=sys.stderr)
        code = 2
    except ValueError as exc:  # bad option values (VerifyOptions), reported like argparse does
        print(f"verifier: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
