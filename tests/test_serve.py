"""`verifier serve` and `verifier demo` as an operator runs them: real processes, real
sockets on 127.0.0.1, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from verifier import __version__
from verifier.testing import Signer, TestPKI, free_port, pem, write_preload
from verifier.testing.repository import Repository


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "verifier", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # a group of its own: the fixture kills workers too
    )


async def wait_ready(base: str, proc: subprocess.Popen[str], within: float = 20) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"exited early: {proc.communicate()}")
            try:
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("service did not become ready")


def stop(proc: subprocess.Popen[str], signum: int | None = signal.SIGTERM) -> tuple[int, str, str]:
    """Send ``signum`` (None: it was sent already) and wait for the process to exit."""
    if signum is not None and proc.poll() is None:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


async def serve_preloaded(
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],
    signers: list[Signer],
    *,
    anchors: Path,
    toml: str = "",
    x5u: str = "",
    records: str | None = None,
    flags: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[str], str, int]:
    """`verifier serve --config` trusting ``anchors`` (a file or a directory) with the
    ``signers``' chains preloaded, ready: (process, base URL, port). ``toml``: top-level
    lines; ``x5u``: more ``[x5u]`` lines; ``records``: the ``[records]`` lines (default: a
    store in ``tmp_path/data``)."""
    preload = write_preload(tmp_path / "preload", signers)
    port = free_port()
    if records is None:
        records = f"data_dir = '{tmp_path / 'data'}'\n"
    (tmp_path / "v.toml").write_text(
        f"port = {port}\ntrust_anchors = ['{anchors}']\n{toml}"
        f"[x5u]\npreload_dir = '{preload}'\ncrl_check = false\n{x5u}"
        f"[records]\n{records}"
    )
    proc = start("serve", "--config", str(tmp_path / "v.toml"), *flags)
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, proc)
    return proc, base, port


def atis_body(identity: str, now: int, to: str = "12155551213") -> dict[str, object]:
    return {
        "verificationRequest": {
            "from": {"tn": "12155551212"},
            "to": {"tn": [to]},
            "time": now,
            "identity": identity,
        }
    }


def test_refuses_to_start_without_trust_anchors(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    proc = start("serve", "--port", str(free_port()), cwd=tmp_path)
    _out, err = proc.communicate(timeout=20)
    code = proc.returncode
    assert 2 == code
    assert "no .pem/.crt/.cer files" in err


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text("[http_client]\ntimeout = 'soon'\n")
    proc = start("serve", "--config", str(tmp_path / "v.toml"))
    _out, err = proc.communicate(timeout=20)
    code = proc.returncode
    assert 2 == code
    assert "[http_client] timeout: expected a number" in err


async def test_graceful_shutdown_finishes_requests_in_flight(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    pki = TestPKI.create()
    async with Repository.create(pki) as repo:
        repo.put("/sp.pem", pki.signer.chain_pem(), delay=1.0)  # a slow repository
        pki.signer.x5u = repo.url("/sp.pem")
        (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
        (tmp_path / "ca.pem").write_bytes(repo.ca_pem)
        port = free_port()
        (tmp_path / "v.toml").write_text(
            f"port = {port}\ntrust_anchors = ['{tmp_path / 'root.pem'}']\n"
            f"[http_client]\nca_file = '{tmp_path / 'ca.pem'}'\nprivate_allow = ['127.0.0.1']\n"
            f"ports = [443, {repo.port}]\n[x5u]\ncrl_check = false\n"
            f"[records]\ndata_dir = '{tmp_path / 'data'}'\n"
        )
        proc = start("serve", "--config", str(tmp_path / "v.toml"))
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, proc)
        now = int(time.time())
        async with aiohttp.ClientSession() as session:

            async def call(i: int) -> tuple[int, object]:
                body = atis_body(pki.signer.identity(iat=now), now)
                async with session.post(base + "/stir/v1/verification", json=body) as resp:
                    return resp.status, await resp.json()

            calls = [asyncio.create_task(call(i)) for i in range(20)]
            await asyncio.sleep(0.4)  # all 20 wait on the one slow x5u fetch
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*calls)
        code, _out, err = stop(proc, None)
    passed = {"verificationResponse": {"verstat": "TN-Validation-Passed", "attest": "A"}}
    assert [(200, passed)] * 20 == answers
    assert 0 == code, err
    assert 1 == repo.counts["/sp.pem"]


async def test_sighup_reloads_trust_anchors_and_keeps_the_old_on_error(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    other = TestPKI.create(x5u="https://certs.example.net/other.pem")
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "root.pem").write_bytes(pem(pki.root.cert))
    proc, base, _ = await serve_preloaded(
        tmp_path, procs, [pki.signer, other.signer], anchors=anchors, x5u="failure_ttl = 0\n"
    )
    now = int(time.time())

    async def verstat(session: aiohttp.ClientSession, signer_pki: TestPKI) -> str:
        body = atis_body(signer_pki.signer.identity(iat=now), now)
        async with session.post(base + "/stir/v1/verification", json=body) as resp:
            assert 200 == resp.status
            return str((await resp.json())["verificationResponse"]["verstat"])

    async def reloads(session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(base + "/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("verifier_reloads_total{"):
                outcome = line.split('outcome="')[1].split('"')[0]
                out[outcome] = float(line.rsplit(" ", 1)[1])
        return out

    async with aiohttp.ClientSession() as session:
        assert "TN-Validation-Passed" == await verstat(session, pki)
        assert "TN-Validation-Failed" == await verstat(session, other)  # untrusted root
        # a broken anchor file: the reload fails, the old anchors stay in force
        (anchors / "root.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert {"failed": 1.0} == await reloads(session)
        assert "TN-Validation-Passed" == await verstat(session, pki)
        # the other PKI's root: after SIGHUP its calls pass and the old root's fail
        (anchors / "root.pem").write_bytes(pem(other.root.cert))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert {"failed": 1.0, "ok": 1.0} == await reloads(session)
        assert "TN-Validation-Passed" == await verstat(session, other)
        assert "TN-Validation-Failed" == await verstat(session, pki)
    code, _out, err = stop(proc)
    assert 0 == code
    assert "reload_failed" in err


async def test_serve_logs_one_start_up_line(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    proc, _, port = await serve_preloaded(
        tmp_path,
        procs,
        [pki.signer],
        anchors=tmp_path / "root.pem",
        flags=("--keepalive-timeout", "30"),
    )
    code, _out, err = stop(proc)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    serving = [line for line in lines if line["event"] == "serving"]
    assert 0 == code, err
    assert 1 == len(serving), err
    (line,) = serving
    expiry = pki.root.cert.not_valid_after_utc.isoformat()
    assert {
        "level": "INFO",
        "logger": "verifier.http.app",
        "event": "serving",
        "version": __version__,
        "address": f"127.0.0.1:{port}",
        "workers": 1,
        "pid": proc.pid,
        "trust_anchors": 1,
        "earliest_anchor_expiry": expiry,
        "policy": "default",
        "records": f"sqlite {tmp_path / 'data'}",
        "redis": "off",
        "trust_list": "off",
    } == {k: v for k, v in line.items() if k not in ("ts", "key_tables")}
    assert line["key_tables"] == "available" or line["key_tables"].startswith("unavailable: ")


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: str, now: int
) -> tuple[int, dict[str, str]]:
    """One ATIS call on a kept-alive connection: its status and (lower-case) headers."""
    body = json.dumps(atis_body(identity, now)).encode()
    writer.write(
        b"POST /stir/v1/verification HTTP/1.1\r\nHost: v\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    pairs = (line.partition(":") for line in head[1:] if line)
    headers = {name.lower(): value.strip() for name, _, value in pairs}
    await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), headers


async def test_sigterm_answers_what_arrives_on_idle_connections_then_closes_them(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Issue 15 item 5: a call sent on a kept-alive connection just after SIGTERM is
    answered, with ``Connection: close``, not reset."""
    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    proc, base, port = await serve_preloaded(
        tmp_path, procs, [pki.signer], anchors=tmp_path / "root.pem", records="enabled = false\n"
    )
    now = int(time.time())
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    before = [await _exchange(r, w, pki.signer.identity(iat=now), now) for r, w in connections]
    assert [(200, None)] * 4 == [(status, h.get("connection")) for status, h in before]
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # systemd's and a supervisor's: the second changes nothing
    async with aiohttp.ClientSession() as session:  # wait for the shutdown to begin
        for _ in range(200):
            try:
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 503:
                        break
            except aiohttp.ClientError:  # no longer listening
                break
            await asyncio.sleep(0.01)
    after = [await _exchange(r, w, pki.signer.identity(iat=now), now) for r, w in connections]
    assert [(200, "close")] * 4 == [(status, h.get("connection")) for status, h in after]
    assert [b""] * 4 == [await asyncio.wait_for(r.read(), 10) for r, _ in connections]
    for _, writer in connections:
        writer.close()
    code, _out, err = stop(proc, None)
    assert 0 == code, err
    assert "draining" in err


def test_serve_refuses_a_keepalive_timeout_that_is_no_duration(tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(pem(TestPKI.create().root.cert))
    proc = start("serve", "--trust-anchor", str(tmp_path / "root.pem"), "--keepalive-timeout", "0")
    _out, err = proc.communicate(timeout=20)
    assert 2 == proc.returncode
    assert "keepalive_timeout must be a positive number of seconds" in err


async def test_workers_share_one_port_and_sum_their_metrics(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    pki = TestPKI.create()
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    port = free_port()
    proc = start(
        "serve",
        "--trust-anchor",
        str(tmp_path / "root.pem"),
        "--port",
        str(port),
        "--workers",
        "2",
        cwd=tmp_path,  # its record store goes to ./data
    )
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, proc)
    heartbeat = {"verificationRequest": {"from": {"tn": "1"}, "to": {"tn": ["2"]}, "time": 1}}
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            # a new connection each time, so the kernel spreads them over the workers
            async with session.post(
                base + "/stir/v1/verification", json=heartbeat, headers={"Connection": "close"}
            ) as resp:
                assert 200 == resp.status
        async with session.get(base + "/metrics") as resp:
            metrics = await resp.text()
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("verifier_verifications_total{") and 'reason="no_identity"' in line
    )
    assert 20.0 == float(line.rsplit(" ", 1)[1])
    code, _out, err = stop(proc)
    assert 0 == code
    pids = json.loads(next(x for x in err.splitlines() if "workers_started" in x))["pids"]
    assert 2 == len(pids)


async def test_demo_prints_commands_that_give_the_printed_answers(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = start("demo", "--dir", str(tmp_path / "dev"), "--port", str(port), cwd=tmp_path)
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, proc)
    assert proc.stdout is not None
    lines: list[str] = []
    while not any("Ctrl-C" in line for line in lines):
        lines.append(await asyncio.to_thread(proc.stdout.readline))
    text = "".join(lines)
    assert "created a dev PKI" in text
    commands = [line for line in lines if " -m verifier sign " in line and "sipp" not in line]
    expected = [line for line in lines if line.startswith("# expected")]
    assert 2 == len(commands) == len(expected)
    for command, answer in zip(commands, expected, strict=True):
        # run the printed pipeline: `... sign ... | curl ...` (curl replaced by aiohttp)
        sign = command.rstrip(" \\\n")
        out = await asyncio.to_thread(  # the printed shell command, as a user pastes it
            subprocess.run, ["bash", "-c", sign], check=True, capture_output=True, text=True
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                base + "/stir/v1/verification",
                data=out.stdout,
                headers={"Content-Type": "application/json"},  # as the printed curl sends
            ) as resp,
        ):
            got = await resp.json(content_type=None)
        printed = json.loads(answer.split(": ", 1)[1])
        assert printed == got
    assert ["TN-Validation-Passed", "No-TN-Validation"] == [
        json.loads(a.split(": ", 1)[1])["verificationResponse"]["verstat"] for a in expected
    ]
    sipp = next(line for line in lines if "sipp" in line and " -m verifier sign " in line)
    call = await asyncio.to_thread(  # SIPp's call gets its 302 with verstat passed
        subprocess.run, ["bash", "-c", sipp], capture_output=True, text=True, check=False
    )
    assert 0 == call.returncode, call.stdout[-2000:]
    code, _out, _err = stop(proc, signal.SIGINT)
    assert 0 == code


async def test_sigterm_under_load_loses_no_accepted_record(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    from verifier.records import SqliteRecordStore

    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    proc, base, _ = await serve_preloaded(
        tmp_path,
        procs,
        [pki.signer],
        anchors=tmp_path / "root.pem",
        toml="log_level = 'WARNING'\n",
        records=f"data_dir = '{tmp_path / 'data'}'\n[tuning]\nwriter_batch_size = 50\n",
    )
    now = int(time.time())
    bodies = [atis_body(pki.signer.identity(iat=now), now) for _ in range(400)]
    answered = 0
    hundred = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def caller(chunk: list[dict[str, object]]) -> None:
            nonlocal answered
            for body in chunk:
                try:
                    async with session.post(base + "/stir/v1/verification", json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            answered += 1
                            if answered >= 100:
                                hundred.set()
                except aiohttp.ClientError:
                    return  # the server has stopped accepting: this call was not accepted

        callers = [asyncio.create_task(caller(bodies[i::8])) for i in range(8)]
        await hundred.wait()
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*callers)
    code, _out, err = stop(proc, None)
    assert 0 == code, err
    store = SqliteRecordStore.open(tmp_path / "data", create=False)
    try:
        total = store.stats(None, None)["total"]
    finally:
        store.close()
    # every call that got its answer was recorded (and none twice)
    assert answered == total
    assert 100 <= answered
