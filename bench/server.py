"""Benchmark: ``keyward server`` under N signed requests per second, and what a signature costs.

Starts a real ``keyward server`` (a subprocess, JSON log at info as the systemd unit has it)
on 127.0.0.31 over a fresh SQLite registry with ``--people`` people, each with an
administrator-attested ed25519 key.  Client threads send requests at a fixed rate
(``--rate`` per second, open loop: request i is due at start + i/rate, and its latency counts
from then, so a server that falls behind shows it) for ``--seconds``, each request signed
afresh (new nonce) in-process with the person's key: a mix of ``GET /api/v1/whoami`` and, a
``--write-fraction`` of them, ``POST /api/v1/access-requests`` (a registry write with its
audit event).  Afterwards every successful write must have exactly one ``access.request``
audit event: "no lost audit event".

It also measures, in this process, what the server pays per request to authenticate:
``signing.verify_request`` alone per key type, and the whole ``identity.authenticate``
(registry lookups, signature, nonce) on the same SQLite registry.

    python bench/server.py --rate 200 --seconds 60 --json bench/results/server_200.json

Binds 127.0.0.31 only; the server is stopped and the temporary directory removed at the
end, also on ^C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from keyward.auth import signing  # noqa: E402
from keyward.auth.nonces import NonceStore  # noqa: E402
from keyward.keys import parse_public_key  # noqa: E402
from keyward.sshsig import sign_sshsig  # noqa: E402

HOST = "127.0.0.31"
ROLE = "devops"


def setup(base: Path, people: int) -> tuple[str, Path, dict[str, tuple[bytes, str]]]:
    """Registry, inventory; person -> (private key bytes, fingerprint)."""
    from keyward.registry import ops
    from keyward.registry.store import Registry
    from keyward.testing.keypairs import make_ed25519

    inventory = base / "inventory"
    inventory.mkdir()
    (inventory / "keyward.toml").write_text('[server]\n[server.approvers]\ndevops = ["role:sec"]\n')
    (inventory / "prod.toml").write_text(
        '[environment]\nname = "prod"\nmin_attestation = "admin"\n'
        '[defaults]\nlogin = "root"\naccounts = ["deploy"]\n'
        '[[hosts]]\nname = "web-1"\naddress = "127.0.0.1"\n'
        '[[access]]\nroles = ["devops"]\naccounts = ["deploy"]\n'
    )
    url = f"sqlite:///{base / 'registry.db'}"
    registry, _, _ = Registry.initialise(url)
    keys: dict[str, tuple[bytes, str]] = {}
    now = datetime.now(UTC)
    with registry.write("bench") as tx:
        ops.add_role(tx, ROLE, "")
        for i in range(people):
            name = f"p{i:04d}"
            ops.add_person(tx, name, f"Person {i}", None)
            path = make_ed25519(base / "keys" / name)
            public = parse_public_key(Path(f"{path}.pub").read_text())
            claim = ops.KeyClaim("admin", now + timedelta(days=300), attested_by="bench")
            ops.add_key(tx, name, public, claim)
            keys[name] = (path.read_bytes(), public.fingerprint)
    registry.dispose()
    return url, inventory, keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signed_headers(key: tuple[bytes, str], method: str, path: str, body: bytes) -> dict[str, str]:
    private, fingerprint = key
    stamp = signing.format_timestamp(datetime.now(UTC))
    nonce = os.urandom(18).hex()
    text = signing.canonical_text(method, path, body, stamp, nonce, fingerprint)
    armored = sign_sshsig(private, None, text, signing.NAMESPACE)
    return signing.signature_headers(fingerprint, stamp, nonce, armored)


def load(
    port: int,
    keys: dict[str, tuple[bytes, str]],
    rate: float,
    seconds: float,
    writes: float,
    threads: int,
) -> dict[str, Any]:
    total = int(rate * seconds)
    people = sorted(keys)
    start = time.perf_counter() + 0.5
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[str, int] = {}
    writes_ok = 0
    errors: list[str] = []
    every = round(1 / writes) if writes > 0 else 0

    def worker() -> None:
        nonlocal writes_ok
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= total:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            person = people[i % len(people)]
            if every and i % every == 0:
                method, path = "POST", "/api/v1/access-requests"
                body = json.dumps(
                    {
                        "role": ROLE,
                        "environment": "prod",
                        "duration_seconds": 3600,
                        "reason": f"bench {i}",
                    }
                ).encode()
            else:
                method, path, body = "GET", "/api/v1/whoami", b""
            headers = signed_headers(keys[person], method, path, body)
            if body:
                headers["content-type"] = "application/json"
            sent = time.perf_counter()
            try:
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                status = 0
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            done = time.perf_counter()
            with lock:
                latencies.append(done - due)
                service.append(done - sent)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if method == "POST" and status == 201:
                    writes_ok += 1
        conn.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)

    svc = sorted(service)
    return {
        "requests": total,
        "elapsed_s": round(elapsed, 2),
        "achieved_rate": round(total / elapsed, 1),
        "statuses": statuses,
        "errors": errors[:10],
        "error_count": len(errors) + sum(v for k, v in statuses.items() if k not in ("200", "201")),
        "writes_ok": writes_ok,
        "latency_ms_from_due": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": pct(lat, 1.0)},
        "latency_ms_from_send": {"p50": pct(svc, 0.5), "p99": pct(svc, 0.99), "max": pct(svc, 1.0)},
        "client_threads": threads,
    }


def verification_cost(
    base: Path, url: str, keys: dict[str, tuple[bytes, str]], n: int
) -> dict[str, Any]:
    """Per key type: verify_request alone; and authenticate() on the registry (ed25519)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from keyward.registry.store import Registry
    from keyward.server.identity import RequestFacts, Verifier, authenticate

    made = {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ecdsa-p256": ec.generate_private_key(ec.SECP256R1()),
        "rsa-3072": rsa.generate_private_key(65537, 3072),
    }
    result: dict[str, Any] = {}
    for name, priv in made.items():
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        pub = parse_public_key(
            priv.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        requests = []
        for i in range(n):
            headers = signed_headers((pem, pub.fingerprint), "GET", f"/api/v1/whoami?i={i}", b"")
            parsed = signing.parse_headers(headers)
            assert parsed is not None
            requests.append((parsed, f"/api/v1/whoami?i={i}"))
        began = time.perf_counter()
        for parsed, path in requests:
            signing.verify_request(parsed, pub, "GET", path, b"")
        result[f"verify_request_us_{name}"] = round((time.perf_counter() - began) / n * 1e6, 1)
    registry = Registry.open(url)
    verifier = Verifier("admin", b"s" * 32, NonceStore())
    person = sorted(keys)[0]
    facts = []
    for i in range(n):
        path = f"/api/v1/whoami?i={i}"
        facts.append(RequestFacts("GET", path, b"", signed_headers(keys[person], "GET", path, b"")))
    began = time.perf_counter()
    with registry.read() as session:
        for f in facts:
            assert authenticate(session, f, datetime.now(UTC), verifier) is not None
    result["authenticate_us_ed25519_sqlite"] = round((time.perf_counter() - began) / n * 1e6, 1)
    registry.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--write-fraction", type=float, default=0.1)
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--verify-n", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 5000:
        parser.error("--seconds 0-600, --rate 0-5000")
    base = Path(tempfile.mkdtemp(prefix="keyward-bench-server-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        url, inventory, keys = setup(base, args.people)
        port = free_port()
        log = base / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "keyward",
                    "--db",
                    url,
                    "--inventory",
                    str(inventory),
                    "--log-format",
                    "json",
                    "server",
                    "--listen",
                    f"{HOST}:{port}",
                    "--state-dir",
                    str(base / "state"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        cpu_before = cpu_seconds(process.pid)
        run = load(port, keys, args.rate, args.seconds, args.write_fraction, args.threads)
        run["server_cpu_s"] = round(cpu_seconds(process.pid) - cpu_before, 2)
        run["server_cpu_ms_per_request"] = round(run["server_cpu_s"] / run["requests"] * 1000, 2)
        from keyward.registry.store import Registry

        registry = Registry.open(url)
        with registry.read() as session:
            from sqlmodel import func, select

            from keyward.registry.models import AuditEvent

            events = session.exec(
                select(func.count()).where(AuditEvent.action == "access.request")
            ).one()
        registry.dispose()
        run["audit_access_request_events"] = int(events)
        run["lost_audit_events"] = run["writes_ok"] - int(events)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        process = None
        result = {
            "setup": {
                "rate": args.rate,
                "seconds": args.seconds,
                "write_fraction": args.write_fraction,
                "people": args.people,
                "nproc": os.cpu_count(),
                "loadavg": os.getloadavg(),
            },
            "load": run,
            "verification": verification_cost(base, url, keys, args.verify_n),
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
