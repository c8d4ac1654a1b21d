"""Mutation check of the verification rules: does some test fail when a rule is broken?

Each mutant below changes one line of ``verifier/core`` (at least one per row of the numbered
check table in ``verifier/core/verify.py``, plus the rules found unguarded in issue 20: key
usage, national number matching, the service's signature path). For each, a temporary copy
of the tree (``verifier/``, ``tests/``, ``pyproject.toml``; never the working tree) gets the
change and the core's test files run against it (``-x``: the first failure is enough). A
mutant is *caught* when the tests fail. Every mutant of the list must be caught; add one
with every new rule.

    .venv/bin/python benchmarks/mutate.py [--only NAME ...] [--rev COMMIT] [--keep] [--list]

Run by hand and before a release, not in CI. Exit status 0 when every mutant is caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("verifier", "tests", "pyproject.toml")
CORE_TESTS = (
    "tests/test_verify.py",
    "tests/test_tn.py",
    "tests/test_certs.py",
    "tests/test_passport.py",
    "tests/test_identity.py",
    "tests/test_conformance.py",
    "tests/test_es256.py",
)


@dataclass(frozen=True, slots=True)
class Mutant:
    """``old`` (unique in ``path``; its changed part on one line) becomes ``new``."""

    name: str
    rule: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = CORE_TESTS


MUTANTS: tuple[Mutant, ...] = (
    # -- the numbered check table (verifier/core/verify.py) -------------------------------------
    Mutant(
        "1-identity-present",
        "1 Identity present (428)",
        "verifier/core/verify.py",
        "        if not raw:\n",
        "        if False:\n",
    ),
    Mutant(
        "2-full-form-only",
        "2 Identity syntax, full form (438)",
        "verifier/core/identity.py",
        "    if not parts[0] and not parts[1]:\n",
        "    if False:\n",
    ),
    Mutant(
        "3-signature-is-raw-r-s",
        "3 JWS parts decode: 64-byte R||S (438)",
        "verifier/core/passport.py",
        "    if len(signature) != 64:\n",
        "    if len(signature) > 80:\n",
    ),
    Mutant(
        "4-alg-es256",
        "4 header alg = ES256 (437)",
        "verifier/core/passport.py",
        '    if alg != "ES256":\n',
        "    if alg is None:\n",
    ),
    Mutant(
        "4-typ-passport",
        "4 typ = passport (437)",
        "verifier/core/passport.py",
        '    if typ != "passport":\n',
        "    if typ is None:\n",
    ),
    Mutant(
        "5-ppt-shaken",
        "5 ppt = shaken in the header (438)",
        "verifier/core/passport.py",
        "    if ppt != expected:\n",
        "    if ppt is None:\n",
    ),
    Mutant(
        "6-x5u-equals-info",
        "6 x5u = info (436)",
        "verifier/core/passport.py",
        "    if info_uri is not None and x5u != info_uri:\n",
        "    if False:\n",
    ),
    Mutant(
        "7-attest-a-b-c",
        "7 claims: attest in A, B, C (438)",
        "verifier/core/passport.py",
        "    if not isinstance(attest, str) or attest not in ATTESTATIONS:",
        "    if not isinstance(attest, str):",
    ),
    Mutant(
        "7-origid-required",
        "7 claims: origid present (438)",
        "verifier/core/passport.py",
        "    if not isinstance(origid, str):\n",
        "    if origid is not None and not isinstance(origid, str):\n",
    ),
    Mutant(
        "8-iat-max-age",
        "8 iat freshness: not too old (403)",
        "verifier/core/passport.py",
        "    if age > max_age:\n",
        "    if age > max_age * 10:\n",
    ),
    Mutant(
        "8-iat-future-skew",
        "8 iat freshness: not in the future (403)",
        "verifier/core/passport.py",
        "    if -age > max_future_skew:\n",
        "    if -age > max_future_skew * 100:\n",
    ),
    Mutant(
        "9-orig-matches",
        "9 orig against the calling number (438)",
        "verifier/core/tn.py",
        "            if party.tn is not None and same_tn(party.tn, claims.orig_tn, nanp):\n",
        "            if party.tn is not None:\n",
    ),
    Mutant(
        "9-dest-matches",
        "9 dest against the called number (438)",
        "verifier/core/tn.py",
        "        if tn in claims.dest_tns or any(same_tn(tn, t, nanp) for t in claims.dest_tns):\n",
        "        if True:\n",
    ),
    Mutant(
        "10-x5u-https-only",
        "10 x5u URL rules: https only (436)",
        "verifier/core/x5u.py",
        '    if parts.scheme.lower() != "https":\n',
        '    if parts.scheme.lower() not in ("https", "http"):\n',
    ),
    Mutant(
        "10-x5u-no-query",
        "10 x5u URL rules: no query (436)",
        "verifier/core/x5u.py",
        '    if parts.query or "?" in x5u:\n',
        "    if False:\n",
    ),
    Mutant(
        "11-chain-to-an-anchor",
        "11 certificate chain: a path to a trust anchor (437)",
        "verifier/core/certs.py",
        "            .store(self._store)\n",
        "            .store(xv.Store([*self.anchors, *chain[1:]]))\n",  # trusts what it is sent
    ),
    Mutant(
        "11-validity",
        "11 certificate validity at iat (437)",
        "verifier/core/certs.py",
        "            if when > cert.not_valid_after_utc:\n",
        "            if False:\n",
    ),
    Mutant(
        "11-tnauthlist-spc",
        "11 TNAuthList carries an SPC (437)",
        "verifier/core/certs.py",
        "        if not tnal.spcs:\n",
        "        if False:\n",
    ),
    Mutant(
        "11-leaf-key-usage",
        "11 leaf keyUsage has digitalSignature (437; issue 20)",
        "verifier/core/certs.py",
        "    if not ku.digital_signature:\n",
        "    if False:\n",
    ),
    Mutant(
        "11-ca-key-usage",
        "11 CA keyUsage has keyCertSign (437; issue 20)",
        "verifier/core/certs.py",
        "    if ku is not None and not ku.key_cert_sign:\n",
        "    if False:\n",
    ),
    Mutant(
        "11-leaf-not-a-ca",
        "11 the signing certificate is not a CA (437)",
        "verifier/core/certs.py",
        "    if bc is not None and bc.ca:\n",
        "    if False:\n",
    ),
    Mutant(
        "11-policy-oid-any-cp-version",
        "11 the SHAKEN policy OID of any CP version counts (2.16.840.1.114569.1.1.N; issue 20)",
        "verifier/core/certs.py",
        "        shaken_policy = any(_SHAKEN_POLICY.fullmatch(oid) for oid in policies)\n",
        "        shaken_policy = SHAKEN_POLICY_OID.dotted_string in policies\n",
    ),
    Mutant(
        "12-signature",
        "12 ES256 signature (438)",
        "verifier/core/passport.py",
        "    if not checker.check(signing_input, signature):\n",
        "    if False:\n",
    ),
    Mutant(
        "12-plain-check",
        "12 ES256 signature: the plain check's verdict (438)",
        "verifier/core/es256.py",
        "    except InvalidSignature:\n        return False\n",
        "    except InvalidSignature:\n        return True\n",
    ),
    # -- issue 20: national number matching --------------------------------------------------
    Mutant(
        "9-nanp-given-is-1-plus-claimed",
        "9 national match: given = 1 + claimed 10 digits (issue 20)",
        "verifier/core/tn.py",
        '        if len(claimed) == 10 and given == "1" + claimed:\n',
        "        if given.endswith(claimed):\n",
    ),
    Mutant(
        "9-nanp-claimed-is-1-plus-given",
        "9 national match: claimed = 1 + given 10 digits (issue 20)",
        "verifier/core/tn.py",
        '        if len(given) == 10 and claimed == "1" + given:\n',
        "        if claimed.endswith(given):\n",
    ),
    Mutant(
        "9-nanp-off",
        "9 national match only with nanp_national_match (issue 20)",
        "verifier/core/tn.py",
        "    if nanp:\n",
        "    if True:\n",
    ),
    # -- issue 20: the service's signature path ----------------------------------------------
    Mutant(
        "12-settle-signature-ok-false",
        "12 settle(signature_ok=False) fails the header (issue 20)",
        "verifier/core/verify.py",
        "            if signature_ok is False:\n",
        "            if False:\n",
    ),
    Mutant(
        "12-verify-many-verdicts",
        "12 verify_many settles each entry with its own verdict (issue 20)",
        "verifier/core/verify.py",
        "        for (verification, entry, credential), ok in zip(checks, verdicts, strict=True):\n"
        "            verification.settle(entry, credential, signature_ok=ok)\n",
        "        for (verification, entry, credential), ok in zip(checks, verdicts, strict=True):\n"
        "            verification.settle(entry, credential, signature_ok=True)\n",
    ),
    Mutant(
        "12-verify-signatures-handed-in",
        "12 verify() with a signature check handed in uses its verdict (issue 20)",
        "verifier/core/verify.py",
        "            ok = await signatures("
        "credential.es256, entry.signing_input, entry.signature)\n",
        "            ok = True\n",
    ),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    mutant: Mutant
    caught: bool
    test: str
    """The first failing test (or why it counts as caught), or "" when none failed."""
    seconds: float


def _copy_tree(work: Path, rev: str | None) -> None:
    if rev is not None:  # the tree as committed at ``rev``, e.g. to show a mutant survived there
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, *COPIED],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        return
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=ignore)
        else:
            shutil.copy2(source, work / name)


def _environment(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _check_isolation(work: Path) -> None:
    """The copy's ``verifier`` is the one imported, not the working tree's (editable install)."""
    found = subprocess.run(
        [sys.executable, "-c", "import verifier; print(verifier.__file__)"],
        cwd=work,
        env=_environment(work),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(work.resolve()):
        raise SystemExit(f"the copy imports {found}, not its own verifier: refusing to run")


def _run_tests(work: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf"]
    run = subprocess.run(
        [*command, *tests],
        cwd=work,
        env=_environment(work),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr


def _first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if match:
        return match.group(1)
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _apply(work: Path, mutant: Mutant) -> str:
    """Apply ``mutant`` to the copy; return the file's original text."""
    path = work / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the line to mutate occurs {count} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def run(mutants: tuple[Mutant, ...], keep: bool, rev: str | None = None) -> list[Outcome]:
    work = Path(tempfile.mkdtemp(prefix="verifier-mutate-"))
    try:
        _copy_tree(work, rev)
        _check_isolation(work)
        tests = tuple(sorted({t for m in mutants for t in m.tests if (work / t).exists()}))
        code, output = _run_tests(work, tests)
        if code != 0:
            print(output[-3000:])
            raise SystemExit("the unmutated copy does not pass its tests: nothing to measure")
        print(f"baseline: {len(tests)} test files pass on the unmutated copy in {work}")
        outcomes: list[Outcome] = []
        for mutant in mutants:
            original = _apply(work, mutant)
            started = time.monotonic()
            try:
                code, output = _run_tests(work, tuple(t for t in mutant.tests if t in tests))
            finally:
                (work / mutant.path).write_text(original)
            took = time.monotonic() - started
            caught = code != 0
            test = _first_failure(output) if caught else ""
            outcomes.append(Outcome(mutant, caught, test, took))
            mark = "caught  " if caught else "SURVIVED"
            print(f"{mark} {mutant.name:34} {test}", flush=True)
        return outcomes
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--rev", default=None, help="mutate the tree committed at this git revision instead"
    )
    args = parser.parse_args(argv)
    mutants = MUTANTS
    if args.list:
        for m in mutants:
            print(f"{m.name:34} {m.path}: {m.rule}")
        return 0
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            parser.error(f"no such mutants: {', '.join(sorted(unknown))}")
        mutants = tuple(m for m in MUTANTS if m.name in args.only)
    outcomes = run(mutants, args.keep, args.rev)
    caught = sum(o.caught for o in outcomes)
    print()
    print(f"{'mutant':34} {'rule':62} caught by")
    for o in outcomes:
        by = o.test if o.caught else "SURVIVED: no test failed"
        print(f"{o.mutant.name:34} {o.mutant.rule:62} {by}")
    print()
    print(f"mutation score: {caught}/{len(outcomes)} caught ({100 * caught / len(outcomes):.0f} %)")
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
