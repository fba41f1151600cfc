"""deploy/: what can be checked without a container engine or a systemd to run them.

The Dockerfile's install script runs in a fresh virtual environment; every command of
compose.yaml runs against the test session's PostgreSQL (the receivers on loopback); the systemd
unit passes ``systemd-analyze verify``. Building the image, the container's user and compose's
own start order are not tested here (docs/deploying.md says so).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._live import SECRET, signed
from tests._served import ENTRY_POINT, running

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OUR_IMAGE = "rtms-lifecycle:local"
GUARD = "RTMS_LIFECYCLE_MIN_EVENT_TIME"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined: ``(KEYWORD, arguments)``."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    found = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in found]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) CMD or HEALTHCHECK CMD."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, its anchors resolved."""
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def on_loopback(command: list[str], port: int) -> list[str]:
    """A receiver's command on 127.0.0.1 and a free port (in its container it is 0.0.0.0:8000)."""
    swapped = list(command)
    swapped[swapped.index("--host") + 1] = "127.0.0.1"
    swapped[swapped.index("--port") + 1] = str(port)
    return swapped


def installed(command: list[str]) -> list[str]:
    """The command as the test's virtual environment runs it."""
    assert command[0] == "rtms-lifecycle"
    return [str(ENTRY_POINT), *command[1:]]


# --- Dockerfile -------------------------------------------------------------------------------


def test_the_dockerfile_runs_the_install_script_as_a_non_root_user() -> None:
    """One RUN installs through deploy/install.sh; the image runs `serve` as a user, not root,
    with a HEALTHCHECK on /healthz."""
    steps = dockerfile_instructions()
    runs = [args for keyword, args in steps if keyword == "RUN"]
    assert any("sh /src/deploy/install.sh /opt/rtms-lifecycle /src" in run for run in runs)
    assert steps[0][0] == "FROM"
    assert "-slim" in steps[0][1]
    (user,) = [args for keyword, args in steps if keyword == "USER"]
    assert user not in ("root", "0")
    keywords = [keyword for keyword, _ in steps]
    assert keywords.index("USER") < keywords.index("CMD")
    (cmd,) = [args for keyword, args in steps if keyword == "CMD"]
    assert exec_form(cmd)[:2] == ["rtms-lifecycle", "serve"]
    (health,) = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "/healthz" in health


def test_the_install_script_installs_a_working_command(tmp_path: Path) -> None:
    """deploy/install.sh, as the Dockerfile runs it, in a fresh virtual environment: the
    command, the receiver and the PostgreSQL driver are there."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(
        ["sh", str(DEPLOY / "install.sh"), str(venv), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"version \d+\.\d+", result.stdout)
    python = venv / "bin" / "python"
    check = "import fastapi_offline, psycopg, uvicorn, rtms_lifecycle.server"
    subprocess.run([str(python), "-c", check], check=True, timeout=120)
    assert (venv / "bin" / "rtms-lifecycle").is_file()


# --- compose.yaml -----------------------------------------------------------------------------


def test_compose_has_the_documented_services() -> None:
    """PostgreSQL, a one-shot migration the receivers wait for, two receivers, and monitoring
    behind a profile, mounting the folders of deploy/."""
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "migrate",
        "receiver-1",
        "receiver-2",
        "prometheus",
        "grafana",
    }
    for name in ("receiver-1", "receiver-2"):
        receiver = services[name]
        assert receiver["image"] == OUR_IMAGE
        assert receiver["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert receiver["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["migrate"]["restart"] == "no"
    for name, folder in (("prometheus", "prometheus"), ("grafana", "grafana")):
        assert services[name]["profiles"] == ["monitoring"]
        (mount,) = services[name]["volumes"]
        assert mount.startswith(f"./{folder}:")
        assert (DEPLOY / folder / "README.md").is_file()
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in published)


def guard_default(service: dict[str, Any]) -> str:
    """The receiver's RTMS_LIFECYCLE_MIN_EVENT_TIME as compose resolves it when unset."""
    (value,) = re.findall(r"^\$\{" + GUARD + r":-(.+)\}$", service["environment"][GUARD])
    return str(value)


def test_the_deployments_guard_against_event_times_in_seconds() -> None:
    """The library bounds event_ts by the parser alone; deploy/ sets 2000 as a production guard."""
    for name in ("receiver-1", "receiver-2"):
        assert guard_default(compose()["services"][name]) == "2000-01-01T00:00:00Z"
    assert f"\nEnvironment={GUARD}=2000-01-01T00:00:00Z\n" in unit()


def test_every_compose_command_runs(postgres_url: str, tmp_path: Path) -> None:
    """The migration's command, then both receivers' commands, against one PostgreSQL: each
    receiver answers /healthz (as the Dockerfile's HEALTHCHECK asks it) and records a delivery."""
    services = compose()["services"]
    env = {"RTMS_LIFECYCLE_DB": postgres_url, GUARD: guard_default(services["receiver-1"])}
    migrate = subprocess.run(
        installed(services["migrate"]["command"]),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "Upgraded from an empty database" in migrate.stdout
    (health,) = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    probe = exec_form(health.split("CMD", 1)[1].strip())
    for n, name in enumerate(["receiver-1", "receiver-2"]):
        command: list[str] = services[name]["command"]

        def argv(port: int, command: list[str] = command) -> list[str]:
            return installed(on_loopback(command, port))

        with running(argv, tmp_path, env) as served:
            port = int(served.url.rsplit(":", 1)[1])
            python_probe = [sys.executable, *probe[1:]]
            python_probe[-1] = python_probe[-1].replace(":8000/", f":{port}/")
            subprocess.run(python_probe, check=True, timeout=30)
            payload = {"rtms_stream_id": f"s{n}", "meeting_uuid": "m", "server_urls": "wss://a"}
            raw = json.dumps(
                {"event": "meeting.rtms_started", "event_ts": T0 + n, "payload": payload}
            ).encode()
            answer = httpx.post(f"{served.url}/webhook", content=raw, headers=signed(raw, SECRET))
            assert answer.json()["outcome"] == "applied"
            in_seconds = raw.replace(str(T0 + n).encode(), str((T0 + n) // 1000).encode())
            answer = httpx.post(
                f"{served.url}/webhook", content=in_seconds, headers=signed(in_seconds, SECRET)
            )
            assert answer.json()["outcome"] == "rejected", answer.text
            assert any('"receiver ready' in line for line in served.lines())
    from rtms_lifecycle import Tracker

    with Tracker(postgres_url) as tracker:
        assert {s.stream_id for s in tracker.streams()} == {"s0", "s1"}


# --- systemd ----------------------------------------------------------------------------------


def unit() -> str:
    return (DEPLOY / "rtms-lifecycle.service").read_text()


def test_the_unit_is_hardened_and_writes_only_its_sqlite_folder() -> None:
    """The hardening options are set; the database is a file inside ReadWritePaths."""
    text = unit()
    for option in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ReadWritePaths=/var/lib/rtms-lifecycle",
    ):
        assert f"\n{option}\n" in text
    (db,) = re.findall(r"^Environment=RTMS_LIFECYCLE_DB=sqlite:///(.+)$", text, re.M)
    assert Path(db).parent == Path("/var/lib/rtms-lifecycle")
    (start,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
    assert shlex.split(start)[1:3] == ["serve", "--host"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say (the executable pointed at this test's)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit is not verified here")
    copy = tmp_path / "rtms-lifecycle.service"
    copy.write_text(unit().replace("/opt/rtms-lifecycle/bin/rtms-lifecycle", str(ENTRY_POINT)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
