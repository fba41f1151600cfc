"""``rtms-lifecycle work``: claim live streams and run a command for each, in any language.

One loop on the main thread claims streams up to ``--max``, starts COMMAND for each with the
stream in its environment, renews the leases at a third of their length, and ends a child
(SIGTERM to its process group, SIGKILL after ``--grace``) once its stream stopped or its claim
was lost. A child that exits on its own is reported disconnected, its claim released and its
stream passed over for ``--backoff`` seconds (another worker may take it meanwhile). SIGINT or
SIGTERM to ``work`` end every child and release every claim.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final

import click

from rtms_lifecycle.cli.app import App, pass_app
from rtms_lifecycle.cli.errors import interrupted
from rtms_lifecycle.cli.params import ACCOUNT_OPTION, TEXT, Seconds
from rtms_lifecycle.clock import format_time, now_ms
from rtms_lifecycle.defaults import SCOPES
from rtms_lifecycle.exceptions import ClaimLost, RTMSLifecycleError

if TYPE_CHECKING:
    from rtms_lifecycle.records import Claim
    from rtms_lifecycle.tracker import Tracker

__all__ = ["Supervisor", "child_environment", "work"]

#: The longest the loop sleeps: how soon a child's exit is noticed.
_TICK: Final = 0.1
_PR_SET_PDEATHSIG: Final = 1


def child_environment(claim: Claim, worker: str) -> dict[str, str]:
    """The variables that tell a child which stream it joins, and under which claim."""
    stream = claim.stream
    return {
        "RTMS_STREAM_ID": claim.stream_id,
        "RTMS_SERVER_URLS": stream.server_urls or "",
        "RTMS_SCOPE": stream.scope.value,
        "RTMS_SCOPE_ID": stream.scope_id or "",
        "RTMS_ACCOUNT_ID": stream.account_id or "",
        "RTMS_OPERATOR_ID": stream.operator_id or "",
        "RTMS_CLAIM_TOKEN": str(claim.token),
        "RTMS_WORKER": worker,
    }


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a child told SIGTERM when ``work`` dies, even by ``kill -9``: it must not go on
    acting for a stream another worker takes once the lease runs out."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return in_child


@dataclass
class _Job:
    claim: Claim
    child: subprocess.Popen[bytes]
    renew_at: float  # monotonic seconds
    lease_end: float
    #: Why the child was told to stop; None while it runs on its own.
    ending: str | None = None
    kill_at: float = math.inf


class Supervisor:
    """Claims streams for ``worker`` and runs ``command`` for each; see the module's docstring."""

    def __init__(
        self,
        tracker: Tracker,
        worker: str,
        command: Sequence[str],
        *,
        most: int = 1,
        lease: float = 30.0,
        scopes: Sequence[str] = (),
        account_id: str | None = None,
        grace: float = 10.0,
        backoff: float = 5.0,
        poll: float = 1.0,
        as_json: bool = False,
        out: IO[str] | None = None,
    ) -> None:
        self.tracker, self.worker, self.command = tracker, worker, list(command)
        self.most, self.lease, self.grace, self.backoff, self.poll = (
            most,
            lease,
            grace,
            backoff,
            poll,
        )
        self.scopes, self.account_id, self.as_json = list(scopes), account_id, as_json
        self.out = out or sys.stdout
        self.jobs: dict[str, _Job] = {}
        self.backing_off: dict[str, float] = {}
        self.signalled: int | None = None
        self._hurry = False
        self._next_claim = 0.0
        self._preexec = _die_with_parent()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Work until SIGINT or SIGTERM, then end every child and release every claim."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            while self.signalled is None:
                now = time.monotonic()
                self._reap(now)
                self._keep(now)
                if now >= self._next_claim:
                    self._claim_more(now)
                self._sleep(now)
            self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signalled is not None:
            self._hurry = True  # a second Ctrl-C: no grace
        self.signalled = signum  # only flags: the loop's sleep is short (a lock could deadlock)

    def _sleep(self, now: float) -> None:
        due = [_TICK + now, *(j.renew_at for j in self.jobs.values())]
        due += [j.kill_at for j in self.jobs.values()]
        if self.signalled is None:
            due.append(self._next_claim)
        time.sleep(max(0.0, min(due) - now))

    def _shutdown(self) -> None:
        self._emit("stopping", None, signal=signal.Signals(self.signalled or 0).name)
        now = time.monotonic()
        for job in self.jobs.values():
            self._end(job, "worker stopping", now)
        while self.jobs:
            now = time.monotonic()
            if self._hurry:
                for job in self.jobs.values():
                    job.kill_at = min(job.kill_at, now)
            self._reap(now)
            self._keep(now)
            self._sleep(now)

    # --- claims and children ----------------------------------------------------------------

    def _claim_more(self, now: float) -> None:
        self.backing_off = {s: t for s, t in self.backing_off.items() if t > now}
        while len(self.jobs) < self.most and self.signalled is None:
            try:
                claim = self.tracker.claim(
                    self.worker,
                    lease=self.lease,
                    scope=self.scopes or None,
                    account_id=self.account_id,
                    exclude=self.backing_off,
                )
            except RTMSLifecycleError as exc:
                self._emit("error", None, action="claim", error=str(exc))
                claim = None
            if claim is None:
                self._next_claim = now + self.poll
                return
            self._emit("claimed", claim, expires_at=claim.expires_at)
            self._start(claim, time.monotonic())

    def _start(self, claim: Claim, now: float) -> None:
        env = {**os.environ, **child_environment(claim, self.worker)}
        try:
            child = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                # --json keeps stdout for the event lines: the children write to stderr.
                stdout=sys.stderr if self.as_json else None,
                start_new_session=True,  # a group of its own: Ctrl-C reaches `work` only
                preexec_fn=self._preexec,  # one prctl call: no lock taken after the fork
            )
        except OSError as exc:
            self._emit("error", claim, action="start", error=str(exc))
            self._let_go(claim, f"could not start: {exc}", now)
            return
        self._emit("started", claim, pid=child.pid)
        third = self.lease / 3
        self.jobs[claim.stream_id] = _Job(claim, child, now + third, now + self.lease)

    def _reap(self, now: float) -> None:
        for sid, job in list(self.jobs.items()):
            code = job.child.poll()
            if code is None:
                if job.kill_at <= now:
                    self._signal(job, signal.SIGKILL)
                    job.kill_at = math.inf
                continue
            del self.jobs[sid]
            self._emit("exited", job.claim, pid=job.child.pid, code=code)
            if job.ending is None:
                self._let_go(job.claim, f"child exited with {code}", now)
            else:
                self._finish(job.claim, job.ending)
            self._next_claim = 0.0

    def _let_go(self, claim: Claim, reason: str, now: float) -> None:
        """A child that ended on its own: said, released, and its stream passed over a while."""
        self._finish(claim, reason)
        self.backing_off[claim.stream_id] = now + self.backoff

    def _finish(self, claim: Claim, reason: str) -> None:
        try:
            self.tracker.report_disconnected(claim)
            self._emit("disconnected", claim)
        except ClaimLost:
            pass  # another worker holds it now: not ours to say
        except RTMSLifecycleError as exc:
            self._emit("error", claim, action="report", error=str(exc))
        try:
            released = self.tracker.release(claim, reason=reason)
        except RTMSLifecycleError as exc:
            self._emit("error", claim, action="release", error=str(exc))
            return
        if released:
            self._emit("released", claim, reason=reason)

    def _keep(self, now: float) -> None:
        """Renew what is due; end the children of claims lost, or whose lease ran out unrenewed."""
        for job in self.jobs.values():
            if job.ending is not None and job.ending != "worker stopping":
                continue  # lost: nothing to renew
            if job.renew_at <= now:
                self._renew(job, now)
            if job.ending is None and job.lease_end <= now:
                self._emit("lost", job.claim, reason="lease ran out unrenewed")
                self._end(job, "lease ran out unrenewed", now)

    def _renew(self, job: _Job, now: float) -> None:
        try:
            job.claim = self.tracker.renew(job.claim, lease=self.lease)
        except ClaimLost as lost:
            fields: dict[str, Any] = {"reason": lost.reason}
            if lost.stop_reason is not None:
                fields["stop_reason"] = lost.stop_reason
            self._emit("lost", job.claim, **fields)
            job.renew_at = math.inf
            if job.ending is None:
                self._end(job, f"claim lost: {lost.reason}", now)
            else:
                job.ending = f"claim lost: {lost.reason}"
            return
        except RTMSLifecycleError as exc:
            self._emit("error", job.claim, action="renew", error=str(exc))
            job.renew_at = now + min(1.0, self.lease / 10)
            return
        job.renew_at, job.lease_end = now + self.lease / 3, now + self.lease

    def _end(self, job: _Job, reason: str, now: float) -> None:
        if job.ending is not None:
            return
        job.ending = reason
        job.kill_at = now + self.grace
        self._signal(job, signal.SIGKILL if self._hurry else signal.SIGTERM, reason)

    def _signal(self, job: _Job, sig: signal.Signals, reason: str | None = None) -> None:
        try:
            os.killpg(job.child.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # gone already: the next reap sees it
        fields: dict[str, Any] = {"pid": job.child.pid, "signal": sig.name}
        if reason is not None:
            fields["reason"] = reason
        self._emit("signalled", job.claim, **fields)

    # --- output -----------------------------------------------------------------------------

    def _emit(self, event: str, claim: Claim | None, **fields: Any) -> None:
        at = now_ms()
        line: dict[str, Any] = {"event": event, "at": at, "worker": self.worker}
        if claim is not None:
            line |= {"stream_id": claim.stream_id, "token": claim.token}
        line |= fields
        if self.as_json:
            text = json.dumps(line)
        else:
            about = f" {claim.stream_id} token {claim.token}" if claim is not None else ""
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if k != "expires_at")
            text = f"{format_time(at)} {event}{about}" + (f" {rest}" if rest else "")
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the events any more: the work goes on


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _check_command(command: Sequence[str]) -> None:
    if not command:
        raise click.BadParameter("give the command to run, after --", param_hint="'COMMAND'")
    if shutil.which(command[0]) is None:
        raise click.BadParameter(
            f"{command[0]!r} is not an executable file (nor one on PATH)", param_hint="'COMMAND'"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("worker", type=TEXT)
@click.option(
    "--max",
    "most",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="Streams held (children run) at once.",
)
@click.option(
    "--lease",
    type=Seconds(min=0.3, max=86_400),
    default=30.0,
    show_default=True,
    help="Seconds a claim holds unless renewed; renewed every third of it.",
)
@click.option(
    "--scope", "scopes", type=click.Choice(SCOPES), multiple=True, help="Only this product."
)
@ACCOUNT_OPTION
@click.option(
    "--grace",
    type=Seconds(min=0, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL of a child whose stream ended.",
)
@click.option(
    "--backoff",
    type=Seconds(min=0, max=86_400),
    default=5.0,
    show_default=True,
    help="Seconds a stream whose child exited on its own is passed over.",
)
@click.option(
    "--poll",
    type=Seconds(min=0.05, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds between looks for a free stream while none is.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (docs/cli.md).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def work(
    app: App,
    worker: str,
    most: int,
    lease: float,
    scopes: tuple[str, ...],
    account_id: str | None,
    grace: float,
    backoff: float,
    poll: float,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Claim up to --max live streams as WORKER and run COMMAND once for each.

    The child finds its stream in RTMS_STREAM_ID, RTMS_SERVER_URLS, RTMS_SCOPE, RTMS_SCOPE_ID,
    RTMS_OPERATOR_ID, RTMS_ACCOUNT_ID and RTMS_CLAIM_TOKEN. It gets SIGTERM when its stream
    stops or the claim is lost; one that exits on its own has its stream claimed again after
    --backoff. Ctrl-C ends every child and releases every claim. Put COMMAND after `--`:

        rtms-lifecycle work worker-7 --max 20 -- python join.py
    """
    from rtms_lifecycle.tracking import check_worker

    try:
        check_worker(worker)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'WORKER'") from None
    _check_command(command)
    supervisor = Supervisor(
        app.tracker(create=False),
        worker,
        command,
        most=most,
        lease=lease,
        scopes=scopes,
        account_id=account_id,
        grace=grace,
        backoff=backoff,
        poll=poll,
        as_json=as_json,
    )
    supervisor.run()
    if supervisor.signalled == signal.SIGINT:
        raise interrupted("Interrupted: every child ended, every claim released.")
