"""The docs say what the code does: generated parts match the code, and the examples run."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rtms_lifecycle import Tracker, describe_stop_reason
from rtms_lifecycle.machine import transition_table

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
GENERATOR_SCRIPTS = [
    "gen_state_diagram",
    "gen_stop_reasons",
    "gen_decisions_index",
    "gen_endpoints",
]
# A Markdown link to a file of the repository (not a web page, not an anchor on the same page).
# Pages the receiver and benchmark work add to docs/; linked from here before they land.
_WRITTEN_ELSEWHERE = frozenset({"receiver.md", "benchmarks.md"})
_LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")


@pytest.fixture(scope="module")
def scripts() -> Iterator[dict[str, ModuleType]]:
    """The doc generators in scripts/, imported as modules."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield {name: importlib.import_module(name) for name in ["_docgen", *GENERATOR_SCRIPTS]}
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def python_blocks(path: Path) -> list[str]:
    """The ```python code blocks of a Markdown file."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


# --- generated regions --------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATOR_SCRIPTS)
def test_generated_docs_match_the_code(scripts: dict[str, ModuleType], name: str) -> None:
    """Every generated region equals what its script generates from the code now."""
    script = scripts[name]
    assert scripts["_docgen"].stale_regions(script.DOC, script.GENERATORS) == []


@pytest.mark.parametrize("name", GENERATOR_SCRIPTS)
def test_check_mode_catches_drift_and_a_rewrite_fixes_it(
    scripts: dict[str, ModuleType], name: str, tmp_path: Path
) -> None:
    """`--check` fails on an edited region; running the script rewrites it to match again."""
    script, docgen = scripts[name], scripts["_docgen"]
    doc = tmp_path / script.DOC.name
    shutil.copy(script.DOC, doc)
    region = next(iter(script.GENERATORS))
    begin, _ = docgen.markers(region)
    doc.write_text(doc.read_text().replace(begin, begin + "\nhand-edited line"))
    assert docgen.main(["gen", "--check"], doc, script.GENERATORS) == 1
    assert docgen.main(["gen"], doc, script.GENERATORS) == 0
    assert docgen.main(["gen", "--check"], doc, script.GENERATORS) == 0
    assert "hand-edited line" not in doc.read_text()


def test_state_diagram_has_every_transition_of_the_machine() -> None:
    """Each applied cell of the machine is one edge of the diagram in concepts.md."""
    text = (DOCS / "concepts.md").read_text()
    table = transition_table()
    assert len(table) == 13
    for (state, kind), (dest, name) in table.items():
        assert f"    {state.value} --> {dest.value}: {kind.value} / {name.value}\n" in text


def test_stop_reason_table_names_every_code() -> None:
    """Each of Zoom's codes 0-26 is a row with its name and category, plus unknown and expiry."""
    text = (DOCS / "stop-reasons.md").read_text()
    for code in range(27):
        reason = describe_stop_reason(code)
        assert f"| {code} | `{reason.name}` | {reason.category.value} |" in text
    assert "| any other | `UNKNOWN_<code>` | unknown |" in text
    assert "| null (expiry) | `EXPIRED` | expired |" in text


# --- README ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/rtms-lifecycle demo",
        'python3 -m venv .venv && .venv/bin/pip install -U "pip>=25.1" && .venv/bin/pip install'
        ' -e ".[all]" --group test && .venv/bin/python -m pytest',
        'pip install -e ".[server]"',
        "rtms-lifecycle serve --port 8000",
    ],
)
def test_readme_keeps_the_set_up_commands(command: str) -> None:
    """The README's copy-paste commands stay exactly as CI and newcomers use them."""
    assert f"{command}\n" in README.read_text()


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example runs and prints the live stream, then the stop callback."""
    monkeypatch.chdir(tmp_path)
    (example,) = python_blocks(README)
    printed: list[str] = []
    exec(compile(example, "README.md", "exec"), {"print": lambda *a: printed.append(str(a))})
    assert len(printed) == 2
    assert "609340fb2a79" in printed[0]
    assert "wss://rtms.zoom.us" in printed[0]
    assert "MEETING_ENDED" in printed[1]


def _links() -> list[tuple[Path, str]]:
    files = [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]
    return [(path, link) for path in files for link in sorted(set(_LINK.findall(path.read_text())))]


@pytest.mark.parametrize(("source", "link"), _links(), ids=lambda v: getattr(v, "name", v))
def test_relative_links_resolve(source: Path, link: str) -> None:
    """Every relative link in the README and docs points at a file of the repository."""
    target = (source.parent / link).resolve()
    if target.name in _WRITTEN_ELSEWHERE and not target.exists():
        pytest.skip(f"{target.name} is written with the receiver and benchmark work, not yet here")
    assert target.is_file(), f"{source.name} links to missing {link}"


def test_api_reference_lists_every_public_name() -> None:
    """docs/reference/api.md names everything in rtms_lifecycle.__all__ (errors by their module)."""
    import rtms_lifecycle
    from rtms_lifecycle import exceptions

    reference = (DOCS / "reference" / "api.md").read_text()
    missing = [
        name
        for name in rtms_lifecycle.__all__
        if f"::: rtms_lifecycle.{name}\n" not in reference
        and not (name in vars(exceptions) and "::: rtms_lifecycle.exceptions" in reference)
    ]
    assert missing == []


def test_cli_reference_documents_every_command() -> None:
    """docs/cli.md has a section for each command the CLI has."""
    from rtms_lifecycle.cli.commands import cli

    text = (DOCS / "cli.md").read_text()
    names = [name for name in cli.commands if name not in ("db", "audit")] + [
        "db current",
        "db history",
        "db upgrade",
        "db downgrade",
        "db grant",
        "audit verify",
        "audit head",
    ]
    for name in names:
        assert f"## `rtms-lifecycle {name}`" in text


# --- the FastAPI embedding example ----------------------------------------------------------------


def test_embedding_example_runs(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/embedding.md's FastAPI backend records a signed webhook, serves it, feeds it on."""
    pytest.importorskip("fastapi", reason="the example needs the 'server' extra")
    from fastapi.testclient import TestClient

    from tests._live import signed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTMS_LIFECYCLE_DB", sqlite_url)
    monkeypatch.setenv("ZOOM_WEBHOOK_SECRET_TOKEN", "example-secret")
    (code,) = [b for b in python_blocks(DOCS / "embedding.md") if "FastAPI(lifespan" in b]
    namespace: dict[str, Any] = {"__name__": "app"}
    exec(compile(code, "embedding.md", "exec"), namespace)
    published: list[dict[str, Any]] = []

    async def publish(transition: dict[str, Any]) -> None:
        published.append(transition)

    namespace["publish"] = publish  # the example's hook for "your message queue"

    def webhook(event: str, ts: int) -> dict[str, Any]:
        payload = {"rtms_stream_id": "s1", "meeting_uuid": "m1", "server_urls": "wss://a"}
        raw = json.dumps({"event": f"meeting.rtms_{event}", "event_ts": ts, "payload": payload})
        headers = signed(raw.encode(), "example-secret")
        answer = client.post("/zoom/webhook", content=raw, headers=headers)
        assert answer.status_code == 200
        return dict(answer.json())

    with TestClient(namespace["app"]) as client:
        assert webhook("started", T0 + 1_000)["outcome"] == "applied"
        assert webhook("interrupted", T0 + 2_000)["outcome"] == "applied"
        resumed = client.post("/internal/streams/s1/resumed", params={"at_ms": T0 + 3_000})
        assert resumed.json() == {"outcome": "applied"}
        live = client.get("/live").json()
        assert [(s["stream_id"], s["state"], s["resumes"]) for s in live] == [("s1", "resumed", 1)]
        deadline = time.monotonic() + 10
        while len(published) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [t["name"] for t in published] == ["start", "interrupt", "resume"]
    with Tracker(sqlite_url) as tracker:
        (status,) = tracker.subscriptions()
    assert (status.consumer, status.delivered, status.lag) == ("publisher", 3, 0)


def test_embedding_example_logs_under_uvicorn_as_written(tmp_path: Path) -> None:
    """`uvicorn app:app` on docs/embedding.md's app.py, as a process on loopback: its INFO line
    for each published transition and its abnormal-stop warning reach stderr."""
    pytest.importorskip("fastapi", reason="the example needs the 'server' extra")
    import httpx

    from tests._live import SECRET, signed
    from tests._served import running

    (code,) = [b for b in python_blocks(DOCS / "embedding.md") if "FastAPI(lifespan" in b]
    (tmp_path / "app.py").write_text(code, encoding="utf-8")

    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    env = {"RTMS_LIFECYCLE_DB": f"sqlite:///{tmp_path}/app.db", "PYTHONPATH": str(tmp_path)}
    with running(argv, tmp_path, env, probe="/live") as served:
        for event, ts, extra in [
            ("started", T0 + 1_000, {}),
            ("stopped", T0 + 2_000, {"stop_reason": 11}),
        ]:
            payload = {"rtms_stream_id": "s1", "meeting_uuid": "m1", "server_urls": "wss://a"}
            raw = json.dumps(
                {"event": f"meeting.rtms_{event}", "event_ts": ts, "payload": payload | extra}
            ).encode()
            answer = httpx.post(
                f"{served.url}/zoom/webhook", content=raw, headers=signed(raw, SECRET)
            )
            assert answer.json()["outcome"] == "applied"
        deadline = time.monotonic() + 10
        while sum("INFO:     app: transition" in line for line in served.lines()) < 2:
            assert time.monotonic() < deadline, "\n".join(served.lines())
            time.sleep(0.05)
        assert any("WARNING:     app: stream s1 died:" in line for line in served.lines())


def _undefined_names(source: str) -> set[str]:
    """Names the code reads that it never binds (imports, assignments, defs, parameters)."""
    import ast
    import builtins

    tree = ast.parse(source)
    bound, read = set(dir(builtins)), set[str]()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


def test_the_complete_worker_can_be_pasted_and_run() -> None:
    """docs/workers.md's complete worker defines every name it uses, and releases its claims on
    Ctrl-C as well as on SIGTERM."""
    (worker,) = [b for b in python_blocks(DOCS / "workers.md") if "tracker.claim(" in b]
    assert _undefined_names(worker) == set()
    assert "signal.SIGINT" in worker
    assert "signal.SIGTERM" in worker
    assert "stream.stop()" in worker
    assert "except StoreError" in worker  # a failed claim is retried, not the worker's end
    compile(worker, "workers.md", "exec")
