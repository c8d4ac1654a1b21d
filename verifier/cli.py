"""Command line: ``verifier verify | sign | pki init | demo``.

Exit status: 0 passed (or the command succeeded), 1 verification not passed, 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__
from .certs import TrustStore, load_certificates
from .testing import Signer, identity_header, sign_jws, write_pki
from .verify import CallInfo, Result, VerifyOptions, verify_offline

__all__ = ["main"]

DEFAULT_TRUST = Path("certs")


class UsageError(Exception):
    """A bad command line or an unreadable input file: exit status 2."""


def parse_time(text: str) -> float:
    """Epoch seconds, or an RFC 3339 date-time (``2024-05-01T12:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: not epoch seconds nor an RFC 3339 date-time") from None
    if when.tzinfo is None:
        raise UsageError(f"--at {text!r}: an RFC 3339 date-time needs a UTC offset or Z")
    return when.timestamp()


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
    options = VerifyOptions(max_iat_age=args.max_iat_age, max_future_skew=args.max_future_skew)
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
        raise UsageError(
            "give --cert PEM (the signer's chain) or --key PEM; fetching x5u is not built yet"
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_human(result)
    return 0 if result.passed else 1


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
    print(identity_header(sign_jws(key, header, claims), args.x5u))
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
    """Offline demo until the HTTP service exists: sign two calls and verify them."""
    out = Path(args.dir)
    if not (out / "root.pem").exists():
        write_pki(out)
        print(f"created a dev PKI in {out}/")
    chain = x509.load_pem_x509_certificates((out / "sp.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "sp.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{out}/sp.key is not an EC private key")
    signer = Signer(key=key, cert=chain[0], chain=tuple(chain), x5u="https://127.0.0.1:8443/sp.pem")
    trust = TrustStore(load_certificates([out / "root.pem"]))
    now = time.time()
    good = signer.identity(orig="12155551212", dest="12155551213", iat=int(now))
    for title, value, to in (
        ("a genuine call", good, "12155551213"),
        ("the same PASSporT presented for another called number", good, "12155559999"),
    ):
        print(f"\n== {title}\nIdentity: {value}\n")
        result = verify_offline(
            value, now=now, chain=chain, trust=trust, call=CallInfo(from_="12155551212", to=to)
        )
        _print_human(result)
    print(
        "\nVerify your own: verifier verify @FILE"
        f" --cert {out}/sp.pem --trust-anchor {out}/root.pem"
    )
    return 0


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
    v.add_argument(
        "--trust-anchor",
        action="append",
        default=[],
        metavar="PEM|DIR",
        help="trust anchors (default: ./certs)",
    )
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
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("sign", help="sign an Identity header value (testing)")
    s.add_argument("--key", required=True, help="EC P-256 private key PEM")
    s.add_argument("--x5u", required=True)
    s.add_argument("--orig", required=True)
    s.add_argument("--dest", required=True, action="append")
    s.add_argument("--attest", choices=["A", "B", "C"], default="A")
    s.add_argument("--iat", type=int)
    s.add_argument("--origid")
    s.set_defaults(func=cmd_sign)

    p = sub.add_parser("pki", help="test PKI")
    psub = p.add_subparsers(dest="pki_command", required=True)
    pi = psub.add_parser("init", help="write a test PKI to DIR")
    pi.add_argument("dir")
    pi.add_argument("--x5u-base", default="https://127.0.0.1:8443")
    pi.add_argument("--force", action="store_true")
    pi.set_defaults(func=cmd_pki_init)

    d = sub.add_parser("demo", help="run the demo on a dev PKI")
    d.add_argument("--dir", default="certs/dev")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UsageError as exc:
        print(f"verifier: error: {exc}", file=sys.stderr)
        code = 2
    except ValueError as exc:  # bad option values (VerifyOptions), reported like argparse does
        print(f"verifier: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
