"""The project's checks, one session each: what CI runs and what a contributor runs.

`nox` runs every session, each in a virtualenv of its own under .nox/ (made once, then reused);
`nox -s tests -- tests/test_cli.py -x` runs one, with pytest's arguments after `--`. CI
(.ci/run) prepares PostgreSQL, chromium and .venv, then runs each session listed by
`nox --list --json` with `nox --no-venv` on that .venv: this file is the one list of checks.
Every session runs even when an earlier one fails; the summary names the failures.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"

ROOT = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# What ruff lints and formats.
PATHS = ("src", "tests", "migrations", "scripts", "noxfile.py")


def _dev_requirement(name: str) -> str:
    """The `dev` group's requirement for ``name``, so that a pin is written once."""
    for requirement in PYPROJECT["dependency-groups"]["dev"]:
        if isinstance(requirement, str) and requirement.split(">")[0].split("=")[0] == name:
            return requirement
    raise LookupError(f"{name} is not in the dev dependency group of pyproject.toml")


def _install(session: nox.Session, *requirements: str) -> None:
    """Install into the session's own virtualenv (nothing with --no-venv: CI's .venv has it all)."""
    if session.venv_backend == "none":
        return
    session.install("pip>=25.1")  # the first pip that installs dependency groups
    session.install(*(requirements or ("-e", ".[all]", "--group", "dev")))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check."""
    _install(session, _dev_requirement("ruff"))
    session.run("ruff", "check", *PATHS)


@nox.session(name="format")
def format_check(session: nox.Session) -> None:
    """ruff format --check."""
    _install(session, _dev_requirement("ruff"))
    session.run("ruff", "format", "--check", *PATHS)


@nox.session
def mypy(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    _install(session)
    session.run("mypy", "--strict", "src", "tests")


@nox.session
def imports(session: nox.Session) -> None:
    """The import layers ([tool.importlinter] in pyproject.toml), checked by lint-imports."""
    _install(session)
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site: a broken link, anchor or API reference fails the build."""
    _install(session)
    with tempfile.TemporaryDirectory() as site:
        session.run(
            "mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"}
        )


@nox.session
def tests(session: nox.Session) -> None:
    """The README's test command; arguments after `--` go to pytest."""
    _install(session)
    command = ["python", "-m", "pytest", *session.posargs]
    if shutil.which("timeout"):
        # SIGINT on timeout lets pytest report where it hung and tear down.
        command = ["timeout", "--signal=INT", "--kill-after=120", "75m", *command]
    session.run(*command, external=True)
