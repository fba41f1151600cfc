"""``rtms-lifecycle work``: claim live streams and run a command for each, in any language.

One loop on the main thread claims streams up to ``--max``, starts COMMAND for each with the
stream in its environment, renews the leases at a third of their length (more often when
``--grace`` leaves less), and ends a child (SIGTERM to its process group, SIGKILL after
``--grace``) once its stream stopped or its claim was lost. A claim still unrenewed ``--grace``
before its lease ends has its child ended then, SIGKILL just before the lease ends (both from a
watchdog thread, whatever database call the loop waits on): no other worker can take the stream
while the child lives. A renewal that finds the stream's server URLs changed (Zoom failed over)
restarts the child under the same claim. A claim whose stream has no server URLs yet (its
started event has not arrived) is held without a child, the stream read again every ``--poll``,
until they come: then its child starts. A child that exits on its own is reported
disconnected, its claim released and its stream passed over for ``--backoff`` seconds, twice as
long after each quick failure up to a cap (another worker may take it meanwhile). SIGINT or
SIGTERM to ``work`` end every child and release every claim. While the database fails, its
first error is printed once, the failed calls counted and summed up every 30 s, and its
recovery said in one line. So are children that keep failing at once (three in a row exit with
an error within 5 s of starting, whatever their streams): one line, again every 30 s while they
do, and one when a child runs again. The children's stdout and stderr are read through pipes
and written line by line among ``work``'s own lines, each with its stream (``--child-output
lines``, the default), unless ``--child-output inherit`` hands them ``work``'s own. One thread
writes every line: none of the others waits on a slow reader of ``work``'s stdout.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final

import click

from rtms_lifecycle.cli.app import App, pass_app
from rtms_lifecycle.cli.child_output import MAX_LINE, ChildLine, ChildPipes, LineReader
from rtms_lifecycle.cli.errors import interrupted
from rtms_lifecycle.cli.line_writer import LineWriter
from rtms_lifecycle.cli.params import ACCOUNT_OPTION, TEXT, Duration
from rtms_lifecycle.clock import format_time, now_ms
from rtms_lifecycle.defaults import DB_ENV, SCOPES
from rtms_lifecycle.display import error_line, printable
from rtms_lifecycle.exceptions import ClaimLost, RTMSLifecycleError
from rtms_lifecycle.store.deadline import Watchdog
from rtms_lifecycle.store.errors import unreachable
from rtms_lifecycle.tracking import MAX_CLAIM_EXCLUDE

if TYPE_CHECKING:
    from rtms_lifecycle.records import Claim
    from rtms_lifecycle.tracker import Tracker

__all__ = [
    "INHERIT",
    "LINES",
    "Supervisor",
    "child_environment",
    "child_output_line",
    "event_line",
    "one_line",
    "work",
]

#: The longest the loop sleeps: how soon a child's exit is noticed.
_TICK: Final = 0.1
_PR_SET_PDEATHSIG: Final = 1
#: The longest back-off after quick failures: ten times ``--backoff``, at most five minutes
#: (unless ``--backoff`` itself is longer).
_BACKOFF_GROWTH: Final = 10
_BACKOFF_CAP: Final = 300.0
# Why a child is told to stop while its claim is kept and renewed.
_STOPPING: Final = "worker stopping"
_FAILOVER: Final = "failover"
#: A claim handed back for a stream whose child still runs (its old claim's lease ran out):
#: that child is ended and a new one started under the new claim, never both at once.
_CLAIMED_AGAIN: Final = "claimed again"
#: Endings after which the same claim gets a new child.
_RESTARTS: Final = (_FAILOVER, _CLAIMED_AGAIN)
#: Between SIGTERM and SIGKILL unless ``--grace`` says, or a third of the lease if less.
DEFAULT_GRACE: Final = 10.0
#: Why a child is ended when its claim's lease nears its end unrenewed.
_FENCED: Final = "lease ending unrenewed"
#: A fenced child's SIGKILL goes this long before its lease ends (at most half of ``--grace``,
#: at least 0.1 s): dead, not dying, by then. At load 10 on 2 cores the watchdog fired 120 ms
#: after a kill due 0.1 s before the lease's end.
_FENCE_MARGIN: Final = 1.0
_MIN_FENCE_MARGIN: Final = 0.1
#: Between two lines saying the database still fails.
OUTAGE_SUMMARY_EVERY: Final = 30.0
#: Different errors printed in one outage; past them the failures are only counted.
_OUTAGE_ERRORS_SHOWN: Final = 10
#: A child that exits with an error (or cannot start) this soon after it started failed at
#: once; so many of them in a row, whatever their streams, are said (``children_failing``), and
#: said again at most every ``CHILDREN_FAILING_EVERY`` seconds while the row goes on.
FAST_FAILURE: Final = 5.0
FAST_FAILURES_SAID: Final = 3
CHILDREN_FAILING_EVERY: Final = 30.0
#: How long a child's exit waits to be said for the rest of its output (its pipes' end, which a
#: grandchild holding them may put off), and how long ``work`` reads what is left as it exits.
_OUTPUT_DRAIN: Final = 1.0
#: How long ``work``, ending, goes on writing what is queued to a slow stdout: then it exits.
_OUTPUT_FLUSH: Final = 2.0
#: ``work``'s own lines queued while its stdout is slow; past them the oldest are dropped (and
#: counted in an ``output_dropped`` line): an operator needs the newest, what is now.
OWN_BACKLOG: Final = 10_000
#: The children's lines queued; past them the thread reading their pipes waits, and so do they.
CHILD_BACKLOG: Final = 1_000
#: Events written only after every child's line queued before them: a child's exit follows
#: its last lines.
_AFTER_ITS_LINES: Final = frozenset({"exited"})
#: ``--child-output``: read through pipes and written line by line, or ``work``'s own.
LINES: Final = "lines"
INHERIT: Final = "inherit"
#: What a failed call of each action is called in the outage's lines.
_CALLS: Final = {
    "renew": "renewal",
    "claim": "claim",
    "report": "report",
    "release": "release",
    "read": "stream read",
}
#: Why a claim is held without a child: its stream's server URLs are not known yet.
_NO_URLS: Final = "no server URLs yet"


def child_environment(claim: Claim, worker: str, db: str | None = None) -> dict[str, str]:
    """The variables that tell a child which stream it joins, under which claim, and (``db``)
    the database ``work`` uses."""
    stream = claim.stream
    database = {DB_ENV: db} if db is not None else {}
    return {
        **database,
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


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` exited, without reaping it: unreaped, its pid (and so its
    process group's id) cannot be another process's yet."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # not on every platform: the group is ended once it is reaped
        return False
    try:
        return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already


def _end_group(pgid: int) -> None:
    """SIGKILL what is left of a child's process group once the child exited: a grandchild
    may hold the stream's media connection, and the stream may be claimed again next."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class _Job:
    claim: Claim
    child: subprocess.Popen[bytes]
    renew_at: float  # monotonic seconds
    lease_end: float
    started: float
    #: Why the child was told to stop; None while it runs on its own.
    ending: str | None = None
    kill_at: float = math.inf
    kill_reason: str = "grace ran out"
    killed: bool = False  # SIGKILL sent
    reaped: bool = False
    #: Disarm the SIGTERM due ``--grace`` before the lease ends and the SIGKILL due just
    #: before it ends; armed again at each renewal.
    fence: list[Callable[[], None]] = field(default_factory=list)
    #: The child's stdout and stderr, read line by line; None when it inherits ``work``'s.
    pipes: ChildPipes | None = None
    #: When its exit was seen while its output was still being read (monotonic).
    exited_at: float | None = None
    #: It ran ``FAST_FAILURE`` seconds (counted once, for children failing at once).
    ran: bool = False


@dataclass
class _Held:
    """A claim held without a child until its stream's server URLs are known (the interrupted
    event came before the started one): renewed as a job's is, the stream read between."""

    claim: Claim
    renew_at: float  # monotonic seconds
    lease_end: float
    look_at: float  # the next read of the stream


def _driver_said(exc: BaseException) -> str:
    """The first line of the error at the root of ``exc``: what the database or driver said."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(error_line(exc).split())


def one_line(text: str) -> str:
    """``text`` on one line: its lines (a driver's message may span several, psycopg's does)
    joined with "; ", each one's runs of spaces made one."""
    return "; ".join(" ".join(part.split()) for part in text.splitlines() if part.strip())


@dataclass
class _Outage:
    """Database calls failing since ``began`` (monotonic seconds; ``began_at`` epoch ms)."""

    began: float
    began_at: int
    unreachable: bool
    shown: float  # when its last line was printed
    failures: Counter[str]
    errors: set[str]
    unshown: int = 0  # failures since that line

    def problem(self, still: bool = False) -> str:
        if self.unreachable:
            return f"{'still ' if still else ''}cannot reach the database"
        return f"database calls {'still ' if still else ''}fail"

    def counted(self) -> str:
        """``12 renewals, 1 claim``: the failed calls, most first."""
        return ", ".join(
            f"{n} {_CALLS.get(action, action)}{'s' if n != 1 else ''}"
            for action, n in self.failures.most_common()
        )


@dataclass
class _Failing:
    """Children failing at once, in a row, since ``began_at`` (epoch ms)."""

    began_at: int
    began: float  # monotonic: only a child started since can end the row
    count: int = 0
    code: int | None = None  # the last one's exit code; None if it could not start
    said: float | None = None  # when its last line was printed (monotonic), if one was


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
        grace: float | None = None,
        backoff: float = 5.0,
        poll: float = 1.0,
        as_json: bool = False,
        out: IO[str] | None = None,
        db: str | None = None,
        child_output: str = LINES,
    ) -> None:
        if grace is None:
            grace = min(DEFAULT_GRACE, lease / 3)
        if not grace < lease:
            raise ValueError(
                f"grace: must be shorter than the lease ({lease:g}s), not {grace:g}s: a child "
                "whose claim goes unrenewed is ended grace before its lease ends"
            )
        self.tracker, self.worker, self.command = tracker, worker, list(command)
        self.db = db
        self.most, self.lease, self.grace, self.backoff, self.poll = (
            most,
            lease,
            grace,
            backoff,
            poll,
        )
        self.scopes, self.account_id, self.as_json = list(scopes), account_id, as_json
        self.out = out or sys.stdout
        #: A third of the lease, or less when the grace leaves less: a renewal is tried, and
        #: retried, before a claim's child is ended for want of one.
        self.renew_every = min(lease / 3, (lease - grace) / 2)
        self.jobs: dict[str, _Job] = {}
        #: Claims held until their stream's server URLs are known: no child runs for them yet.
        self.held: dict[str, _Held] = {}
        #: Claims whose child was ended as their lease neared its end, and that end (monotonic).
        self.expiring: dict[str, tuple[Claim, float]] = {}
        # Between reaping a child, or deciding to end it, and signalling its group (the
        # watchdog's thread does too): a reaped child's pid may be another process's.
        self._signals = threading.RLock()
        #: Writes every line from a thread of its own while ``run`` runs.
        self._writer: LineWriter | None = None
        self._watchdog = Watchdog()
        #: stream id -> (until when it is passed over, quick failures in a row)
        self.backing_off: dict[str, tuple[float, int]] = {}
        self.backoff_cap = max(backoff, min(_BACKOFF_GROWTH * backoff, _BACKOFF_CAP))
        self.signalled: int | None = None
        self._hurry = False
        self._next_claim = 0.0
        self._preexec = _die_with_parent()
        self._outage: _Outage | None = None
        self._failing: _Failing | None = None
        if child_output not in (LINES, INHERIT):
            raise ValueError(f"child_output: {LINES} or {INHERIT}, not {child_output!r}")
        self.child_output = child_output
        self._reader: LineReader | None = None

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Work until SIGINT or SIGTERM, then end every child and release every claim."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        writer = self._writer = LineWriter(self.out, self._dropped_line, own_limit=OWN_BACKLOG,
                                           child_limit=CHILD_BACKLOG, now_ms=now_ms)  # fmt: skip
        if self.child_output == LINES:
            self._reader = LineReader(self._child_lines)
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
            # A reader of stdout that stopped reading holds `work` back this long, no longer.
            writer.close_by(time.monotonic() + _OUTPUT_FLUSH)
            if self._reader is not None:
                self._reader.close(_OUTPUT_DRAIN)
                self._reader = None
            writer.close()
            self._writer = None
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signalled is not None:
            self._hurry = True  # a second Ctrl-C: no grace
        self.signalled = signum  # only flags: the loop's sleep is short (a lock could deadlock)

    def _fence_lead(self) -> float:
        """How long before an unrenewed lease's end its child is ended (SIGTERM)."""
        return max(self.grace, self._kill_margin())

    def _kill_margin(self) -> float:
        """How long before an unrenewed lease's end its child is SIGKILLed."""
        return max(min(_FENCE_MARGIN, self.grace / 2), _MIN_FENCE_MARGIN)

    def _sleep(self, now: float) -> None:
        due = [_TICK + now, *(j.renew_at for j in self.jobs.values())]
        due += [min(h.renew_at, h.look_at, h.lease_end) for h in self.held.values()]
        due += [j.kill_at for j in self.jobs.values()]
        due += [end for _, end in self.expiring.values()]
        if self.signalled is None:
            due.append(self._next_claim)
        time.sleep(max(0.0, min(due) - now))

    def _shutdown(self) -> None:
        self._emit("stopping", None, signal=signal.Signals(self.signalled or 0).name)
        now = time.monotonic()
        for job in self.jobs.values():
            self._end(job, _STOPPING, now)
        for held in list(self.held.values()):
            del self.held[held.claim.stream_id]
            self._finish(held.claim, _STOPPING, report=False)
        while self.jobs:
            now = time.monotonic()
            if self._hurry:
                for job in self.jobs.values():
                    if job.kill_at > now:
                        job.kill_at, job.kill_reason = now, "worker stopping at once"
            self._reap(now)
            self._keep(now)
            self._sleep(now)
        if self._outage is not None and self._outage.unshown:
            self._still_down(self._outage, time.monotonic())

    # --- claims and children ----------------------------------------------------------------

    def _claim_more(self, now: float) -> None:
        # A stream neither held nor failing lately (another worker's now, or stopped) is
        # forgotten: its next failure starts from --backoff again.
        self.backing_off = {
            sid: (until, failures)
            for sid, (until, failures) in self.backing_off.items()
            if sid in self.jobs or until + self.backoff_cap > now
        }
        # At most one claim per free slot, then back to renewals and reaping: a child that
        # cannot start adds no job, and claiming on made a stream claimed, failed and released
        # hundreds of times a second while held leases went unrenewed.
        for _ in range(self.most - len(self.jobs) - len(self.held)):
            if self.signalled is not None:
                return
            passed_over = self._passed_over(now)
            if passed_over is None:
                # So many children failing is the command's fault: claim again as back-offs end.
                self._next_claim = now + self.poll
                return
            try:
                claim = self.tracker.claim(
                    self.worker,
                    lease=self.lease,
                    scope=self.scopes or None,
                    account_id=self.account_id,
                    exclude=passed_over,
                )
            except RTMSLifecycleError as exc:
                self._failed("claim", exc, now)
                claim = None
            else:
                self._answered(time.monotonic())
            if claim is None:
                self._next_claim = now + self.poll
                return
            self._emit("claimed", claim, expires_at=claim.expires_at)
            running = self.jobs.get(claim.stream_id)
            if running is not None:
                self._claimed_again(running, claim, time.monotonic())
                continue
            expired = self.expiring.pop(claim.stream_id, None)
            if expired is not None:
                self._emit("lost", expired[0], reason="lease ran out unrenewed")
            waited = self.held.pop(claim.stream_id, None)
            if waited is not None:  # its lease ran out unrenewed: a new claim, held anew
                self._emit("lost", waited.claim, reason="lease ran out unrenewed")
            self._begin(claim, time.monotonic())

    def _begin(self, claim: Claim, now: float) -> None:
        """A child for a new claim; none before its stream's server URLs are known: the child
        would get an empty ``RTMS_SERVER_URLS``, and Zoom's SDK refuses to join with one."""
        if claim.stream.server_url_list:
            self._start(claim, now)
            return
        self._emit("waiting", claim, reason=_NO_URLS)
        self.held[claim.stream_id] = _Held(claim, now + self.renew_every, now + self.lease, now)

    def _passed_over(self, now: float) -> list[str] | None:
        """The streams a claim must not return: those backing off, then those held (a held
        claim whose lease ran out unrenewed is claimable again), the nearest their lease's end
        first, as many as a claim takes; None when the back-offs alone are too many."""
        backing = [
            sid
            for sid, (until, _) in self.backing_off.items()
            if until > now and sid not in self.jobs
        ]
        room = MAX_CLAIM_EXCLUDE - len(backing)
        if room < 0:
            return None
        ends = {sid: job.lease_end for sid, job in self.jobs.items()}
        ends |= {sid: held.lease_end for sid, held in self.held.items()}
        ends |= {sid: end for sid, (_, end) in self.expiring.items() if sid not in ends}
        held = sorted(ends, key=ends.__getitem__)[:room]
        return backing + held

    def _claimed_again(self, job: _Job, claim: Claim, now: float) -> None:
        """The database handed back a stream whose child still runs: the old claim's lease ran
        out unrenewed (the loop was slower than the lease; past the exclude list's size). The
        new claim is kept and renewed, the old child ended (its token is stale: its fenced
        writes fail) and, once it exited, a new child started under the new claim."""
        self._disarm(job)
        with self._signals:
            old, job.claim = job.claim, claim
            job.renew_at, job.lease_end = now + self.renew_every, now + self.lease
            self._emit("lost", old, reason="lease ran out unrenewed")
            if job.ending is None:
                self._end(job, _CLAIMED_AGAIN, now)
            else:
                job.ending = _CLAIMED_AGAIN  # told to stop already: its signals stand
        self._arm(job)

    def _start(self, claim: Claim, now: float, held: _Job | None = None) -> None:
        """Start a child for ``claim``; ``held``: the job it replaces (a failover), whose
        renewal times it keeps."""
        env = {**os.environ, **child_environment(claim, self.worker, self.db)}
        pipes: ChildPipes | None = None
        try:
            if self._reader is not None:
                # A Python child writing to a pipe buffers its lines in blocks: relayed late.
                env.setdefault("PYTHONUNBUFFERED", "1")
                pipes = ChildPipes(None)
                stdout: Any = pipes.writers[0]
                stderr: Any = pipes.writers[1]
            else:
                # --json keeps stdout for the event lines: the children write to stderr.
                stdout, stderr = (sys.stderr if self.as_json else None), None
            child = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # a group of its own: Ctrl-C reaches `work` only
                preexec_fn=self._preexec,  # one prctl call: no lock taken after the fork
            )
        except OSError as exc:
            if pipes is not None:
                pipes.abandon()
            self._emit("error", claim, action="start", error=str(exc))
            self._let_go(claim, f"could not start: {exc}", now, ran=0.0)
            self._failed_at_once(None, now)
            return
        self._emit("started", claim, pid=child.pid)
        if held is not None:
            renew_at, lease_end = held.renew_at, held.lease_end
        else:
            renew_at, lease_end = now + self.renew_every, now + self.lease
        job = _Job(claim, child, renew_at, lease_end, now, pipes=pipes)
        if pipes is not None and self._reader is not None:
            pipes.close_writers()  # the child's exit ends them
            pipes.owner = job
            self._reader.add(pipes)
        self.jobs[claim.stream_id] = job
        self._arm(job)

    def _reap(self, now: float) -> None:
        for sid, job in list(self.jobs.items()):
            with self._signals:
                ended = not job.reaped and _exited(job.child.pid)
                if ended:
                    _end_group(job.child.pid)
                code = job.child.poll()
                if code is not None and not job.reaped and not ended:
                    _end_group(job.child.pid)
                job.reaped = code is not None
            if code is None:
                if job.kill_at <= now:
                    job.kill_at = math.inf
                    self._kill(job, job.kill_reason)
                elif job.ending is None and not job.ran and now - job.started >= FAST_FAILURE:
                    job.ran = True
                    self._ran(job, now)
                continue
            if job.pipes is not None and not job.pipes.done.is_set():
                # Its last lines before its exit; unless a grandchild keeps its pipes open.
                job.exited_at = job.exited_at or now
                if now - job.exited_at < _OUTPUT_DRAIN:
                    continue
            self._disarm(job)
            del self.jobs[sid]
            self._emit("exited", job.claim, pid=job.child.pid, code=code)
            if job.ending in _RESTARTS and self.signalled is None:
                # The same claim: with the new server URLs, or the claim handed back.
                self._start(job.claim, now, held=job)
                continue
            if job.ending is None:
                self._let_go(job.claim, f"child exited with {code}", now, ran=now - job.started)
                if code != 0 and now - job.started < FAST_FAILURE:
                    self._failed_at_once(code, now)
                else:
                    self._ran(job, now)
            else:
                released = self._finish(
                    job.claim, _STOPPING if job.ending in _RESTARTS else job.ending
                )
                if job.ending == _FENCED and not released:
                    self.expiring[sid] = (job.claim, job.lease_end)  # `lost` when it ends
            self._next_claim = 0.0

    def _let_go(self, claim: Claim, reason: str, now: float, ran: float) -> None:
        """A child that ended on its own: said, released, and its stream passed over a while,
        twice as long after each child that ran less than a lease (up to the cap)."""
        _, failures = self.backing_off.get(claim.stream_id, (0.0, 0))
        failures = 1 if ran >= self.lease else failures + 1
        wait = min(self.backoff * 2 ** min(failures - 1, 32), self.backoff_cap)
        self._finish(claim, reason, backoff=wait)
        self.backing_off[claim.stream_id] = (now + wait, failures)

    def _finish(self, claim: Claim, reason: str, *, report: bool = True, **fields: Any) -> bool:
        """Report ``claim``'s child disconnected (``report``: it had one) and release it;
        whether it was released."""
        try:
            if report:
                self.tracker.report_disconnected(claim)
                self._emit("disconnected", claim)
        except ClaimLost:
            self._answered(time.monotonic())  # another worker holds it now: not ours to say
        except RTMSLifecycleError as exc:
            self._failed("report", exc, time.monotonic())
        else:
            if report:
                self._answered(time.monotonic())
        try:
            released = self.tracker.release(claim, reason=reason)
        except RTMSLifecycleError as exc:
            self._failed("release", exc, time.monotonic())
            return False
        self._answered(time.monotonic())
        if released:
            self._emit("released", claim, reason=reason, **fields)
        return released

    def _keep(self, now: float) -> None:
        """Renew what is due; end the children of claims lost, or whose lease nears its end
        unrenewed."""
        for sid, (claim, end) in list(self.expiring.items()):
            if end <= now:
                del self.expiring[sid]
                self._emit("lost", claim, reason="lease ran out unrenewed")
        for job in self.jobs.values():
            if job.ending not in (None, _STOPPING, *_RESTARTS):
                continue  # lost or fenced: nothing to renew
            if job.renew_at <= now:
                self._renew(job, now)
        for held in list(self.held.values()):
            self._hold(held, now)

    def _hold(self, held: _Held, now: float) -> None:
        """Keep a claim held for its server URLs: renewed when due, and at once when a read of
        its stream finds them; then its child starts. Dropped once lost, or its lease ended."""
        sid = held.claim.stream_id
        if held.lease_end <= now:  # renewals failed until its end: no child to end
            del self.held[sid]
            self._emit("lost", held.claim, reason="lease ran out unrenewed")
            self._next_claim = 0.0
            return
        due = held.renew_at <= now
        if not due and held.look_at <= now:
            held.look_at = now + self.poll
            try:
                stream = self.tracker.stream(sid)
            except RTMSLifecycleError as exc:
                self._failed("read", exc, now)
                return
            self._answered(now)
            due = stream is None or bool(stream.server_url_list)
        if not due:
            return
        claim = self._renewal(held.claim, now)
        if isinstance(claim, ClaimLost):  # stopped, say: there is no child to end
            del self.held[sid]
            self._next_claim = 0.0
            return
        if claim is None:
            held.renew_at = now + min(1.0, self.lease / 10)
            return
        held.claim, held.renew_at, held.lease_end = claim, now + self.renew_every, now + self.lease
        if claim.stream.server_url_list:
            del self.held[sid]
            self._start(claim, now)

    def _arm(self, job: _Job) -> None:
        """Until the next renewal: SIGTERM ``--grace`` before the lease ends, SIGKILL just
        before it ends, from the watchdog's thread, which a database call hanging cannot hold
        back. Then nobody else can take the stream while the child lives."""
        self._disarm(job)
        job.fence = [
            self._watchdog.watch(job.lease_end - self._fence_lead(), lambda: self._fence(job)),
            self._watchdog.watch(
                job.lease_end - self._kill_margin(), lambda: self._kill(job, _FENCED)
            ),
        ]

    @staticmethod
    def _disarm(job: _Job) -> None:
        """Never while holding the signals' lock: a watch that fires holds its own, then that."""
        for disarm in job.fence:
            disarm()
        job.fence = []

    def _fence(self, job: _Job) -> None:
        """The claim is unrenewed ``--grace`` before its lease ends: its child is ended."""
        with self._signals:
            if job.ending is None:
                job.ending = _FENCED
                self._signal(job, signal.SIGTERM, _FENCED)  # SIGKILL: the other watch
            elif job.ending in _RESTARTS:
                job.ending = _FENCED  # told to stop already: no new child for a claim ending

    def _renewal(self, claim: Claim, now: float) -> Claim | ClaimLost | None:
        """Renew ``claim``: the renewed claim; the :class:`ClaimLost`, said in a ``lost``
        line; or None when the database failed (counted, to retry soon)."""
        try:
            renewed = self.tracker.renew(claim, lease=self.lease)
        except ClaimLost as lost:
            self._answered(now)
            fields: dict[str, Any] = {"reason": lost.reason}
            if lost.stop_reason is not None:
                fields["stop_reason"] = lost.stop_reason
            self._emit("lost", claim, **fields)
            return lost
        except RTMSLifecycleError as exc:
            self._failed("renew", exc, now)
            return None
        self._answered(now)
        return renewed

    def _renew(self, job: _Job, now: float) -> None:
        before = job.claim.stream.server_urls
        renewed = self._renewal(job.claim, now)
        if isinstance(renewed, ClaimLost):
            self._disarm(job)  # not a lease to keep: the claim's end is known
            job.renew_at = math.inf
            if job.ending is None:
                self._end(job, f"claim lost: {renewed.reason}", now)
            else:
                job.ending = f"claim lost: {renewed.reason}"
            return
        if renewed is None:
            job.renew_at = now + min(1.0, self.lease / 10)
            return
        job.claim = renewed
        job.renew_at, job.lease_end = now + self.renew_every, now + self.lease
        if job.ending != _FENCED:
            self._arm(job)
        after = job.claim.stream.server_urls
        if after and after != before and job.ending is None:
            # Zoom failed over: the child's RTMS_SERVER_URLS are stale. A new child for the
            # same claim; the claim is kept and renewed meanwhile.
            self._emit(_FAILOVER, job.claim, server_urls=after, state=job.claim.stream.state.value)
            self._end(job, _FAILOVER, now)

    def _end(self, job: _Job, reason: str, now: float) -> None:
        with self._signals:  # the watchdog may be ending it too
            if job.ending is not None:
                return
            job.ending = reason
            if self._hurry:
                self._kill(job, reason)
            else:
                job.kill_at = now + self.grace
                self._signal(job, signal.SIGTERM, reason)

    def _kill(self, job: _Job, reason: str) -> None:
        """SIGKILL to the child's group, once (from the loop, or a fence's timer thread)."""
        with self._signals:
            if job.killed:
                return
            job.killed = True
            self._signal(job, signal.SIGKILL, reason)

    def _signal(self, job: _Job, sig: signal.Signals, reason: str) -> None:
        with self._signals:
            if job.reaped:
                return  # its pid may be another process's now
            try:
                os.killpg(job.child.pid, sig)
            except (ProcessLookupError, PermissionError):
                return  # gone already: the next reap sees it
            self._emit("signalled", job.claim, pid=job.child.pid, signal=sig.name, reason=reason)

    # --- children failing at once -----------------------------------------------------------

    def _failed_at_once(self, code: int | None, now: float) -> None:
        """A child exited with an error within ``FAST_FAILURE`` seconds of starting (``code``
        None: it could not start): counted, and said once ``FAST_FAILURES_SAID`` are in a row."""
        failing = self._failing = self._failing or _Failing(now_ms(), now)
        failing.count += 1
        failing.code = code
        if failing.count < FAST_FAILURES_SAID:
            return
        if failing.said is not None and now - failing.said < CHILDREN_FAILING_EVERY:
            return
        failing.said = now
        what = "could not start" if code is None else f"exited with {code}"
        message = (
            f"every child fails at once: {failing.count} in a row since "
            f"{format_time(failing.began_at)}, the last {what} within {FAST_FAILURE:g}s of "
            f"starting; check the command: {shlex.join(self.command)}"
        )
        self._emit("children_failing", None, message=message, failures=failing.count,
                   code=code, command=self.command, since=failing.began_at)  # fmt: skip

    def _ran(self, job: _Job, now: float) -> None:
        """``job``'s child ran ``FAST_FAILURE`` seconds (said once for each), or exited without
        an error: the row of failures, if any, is over (and said to be, if it was said), if it
        started since the row began. A child started before shows nothing of the new ones:
        counting it each tick made the lines flap beside one long-running child."""
        failing = self._failing
        if failing is None or job.started < failing.began:
            return
        self._failing = None
        if failing.said is None:
            return
        message = (
            f"children run again: one ran {FAST_FAILURE:g}s or exited 0, after "
            f"{failing.count} in a row failed at once since {format_time(failing.began_at)}"
        )
        self._emit("children_recovered", None, message=message, failures=failing.count,
                   since=failing.began_at)  # fmt: skip

    # --- a database outage -------------------------------------------------------------------

    def _failed(self, action: str, exc: RTMSLifecycleError, now: float) -> None:
        """A database call failed: said for the first failure and for each new error; otherwise
        counted, and the count printed every ``OUTAGE_SUMMARY_EVERY`` seconds."""
        error = str(exc)
        outage = self._outage
        if outage is None:
            outage = _Outage(now, now_ms(), unreachable(exc), now, Counter(), set())
            self._outage = outage
        outage.failures[action] += 1
        # The same failure reads differently for each call ("could not renew a claim: ..."):
        # what the driver said tells one failure from another.
        said = _driver_said(exc)
        if said not in outage.errors and len(outage.errors) < _OUTAGE_ERRORS_SHOWN:
            outage.errors.add(said)
            self._down(outage, action, error, now)
        elif now - outage.shown >= OUTAGE_SUMMARY_EVERY:
            self._still_down(outage, now)
        else:
            outage.unshown += 1

    def _down(self, outage: _Outage, action: str, error: str, now: float) -> None:
        running = [j for j in self.jobs.values() if j.ending is None]
        fields: dict[str, Any] = {"action": action, "error": error, "children": len(running)}
        if running:
            first = min(j.lease_end for j in running)
            end = now_ms() + round((first - now) * 1000)
            stop = end - round(self._fence_lead() * 1000)
            fields["lease_ends"], fields["stop_at"] = end, stop
            before = f"{self.grace:g}s before"
            if len(running) == 1:
                keep = (
                    f"its child keeps running until {format_time(stop)}, {before} its lease "
                    "ends, unless a renewal succeeds"
                )
            else:
                keep = (
                    f"{len(running)} children keep running until {before} their leases end, "
                    f"the first at {format_time(stop)}, unless renewals succeed"
                )
        elif self.jobs:
            n = len(self.jobs)
            keep = "its child is being stopped" if n == 1 else f"{n} children are being stopped"
        else:
            keep = "no child is running"
        message = f"{outage.problem()}; {keep} ({action} failed: {error})"
        self._emit("database_down", None, message=message, **fields)
        outage.shown, outage.unshown = now, 0

    def _still_down(self, outage: _Outage, now: float) -> None:
        message = (
            f"{outage.problem(still=True)} ({outage.counted()} failed since "
            f"{format_time(outage.began_at)})"
        )
        failures = dict(outage.failures)
        self._emit("database_still_down", None, message=message, since=outage.began_at,
                   failures=failures)  # fmt: skip
        outage.shown, outage.unshown = now, 0

    def _answered(self, now: float) -> None:
        """A database call succeeded: an outage, if any, is over."""
        outage, self._outage = self._outage, None
        if outage is None:
            return
        after = round(now - outage.began, 1)
        back = "database reachable again" if outage.unreachable else "database calls succeed again"
        message = f"{back} after {after}s ({outage.counted()} failed)"
        self._emit("database_back", None, message=message, since=outage.began_at, after=after,
                   failures=dict(outage.failures))  # fmt: skip

    # --- output -----------------------------------------------------------------------------

    def _child_lines(self, owner: object, lines: list[ChildLine]) -> None:
        """Lines a child wrote, from the reader's thread: each a ``child_output`` line."""
        assert isinstance(owner, _Job)
        at, pid = now_ms(), owner.child.pid
        texts = [
            child_output_line(line, at, self.worker, owner.claim, pid, as_json=self.as_json)
            for line in lines
        ]
        if self._writer is not None:
            self._writer.lines(texts)  # waits while many are queued: the child waits too

    def _emit(
        self, event: str, claim: Claim | None, *, message: str | None = None, **fields: Any
    ) -> None:
        """Queue one of ``work``'s lines; never waits (the watchdog's thread emits too)."""
        at = now_ms()
        text = event_line(event, at, self.worker, claim, fields, as_json=self.as_json,
                          message=message)  # fmt: skip
        if self._writer is not None:
            self._writer.event(text, after_children=event in _AFTER_ITS_LINES)
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        """Outside ``run``, with no writer thread: written at once."""
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the events any more: the work goes on

    def _dropped_line(self, count: int, since: int) -> str:
        """The line saying ``count`` of ``work``'s lines were dropped, the first at ``since``."""
        message = (
            f"{count} of work's lines dropped since {format_time(since)}: its stdout was read "
            f"slower than they came (past {OWN_BACKLOG} queued the oldest go)"
        )
        return event_line("output_dropped", now_ms(), self.worker, None,
                          {"dropped": count, "since": since}, as_json=self.as_json,
                          message=message)  # fmt: skip


def event_line(
    event: str,
    at: int,
    worker: str,
    claim: Claim | None,
    fields: dict[str, Any],
    *,
    as_json: bool,
    message: str | None = None,
) -> str:
    """One of ``work``'s event lines: a JSON object, or text for a person.

    ``message``: the whole story for a person (then the text line shows it instead of the
    fields); a JSON line has it as ``message`` beside the fields.
    """
    if as_json:
        line: dict[str, Any] = {"event": event, "at": at, "worker": worker}
        if claim is not None:
            line |= {"stream_id": claim.stream_id, "token": claim.token}
        if message is not None:
            line["message"] = message
        return json.dumps(line | fields)
    about = f" {claim.stream_id} token {claim.token}" if claim is not None else ""
    if message is not None:
        return printable(f"{format_time(at)} {event}{about}: {one_line(message)}")
    shown = {k: one_line(str(v)) for k, v in fields.items() if k != "expires_at"}
    rest = " ".join(f"{k}={v}" for k, v in shown.items())
    return printable(f"{format_time(at)} {event}{about}" + (f" {rest}" if rest else ""))


def child_output_line(
    line: ChildLine, at: int, worker: str, claim: Claim, pid: int, *, as_json: bool
) -> str:
    """A line a child wrote, as ``work`` writes it: a ``child_output`` JSON object, or the text
    behind its stream id, pid and fd (escaped: a child's output is untrusted)."""
    cut = {"cut": True} if line.cut else {}
    if as_json:
        fields = {"pid": pid, "fd": line.fd, "line": line.text, **cut}
        return event_line("child_output", at, worker, claim, fields, as_json=True)
    marker = f" [cut at {MAX_LINE} bytes]" if line.cut else ""
    return printable(f"{format_time(at)} {claim.stream_id}[{pid}] {line.fd}: {line.text}") + marker


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _check_command(command: Sequence[str]) -> None:
    if not command:
        raise click.BadParameter("give the command to run, after --", param_hint="'COMMAND'")
    program = command[0]
    if shutil.which(program) is not None:
        return
    if os.sep in program or (os.altsep and os.altsep in program):
        if os.path.isdir(program):
            problem = f"{program!r} is a folder, not a program"
        elif os.path.exists(program):
            problem = f"{program!r} exists but is not executable (chmod +x {program})"
        else:
            problem = f"{program!r}: no such file"
    elif os.path.isfile(program):
        problem = f"{program!r} is not on PATH; for the file in this folder give ./{program}" + (
            "" if os.access(program, os.X_OK) else f" (and chmod +x {program})"
        )
    else:
        problem = f"{program!r} is not an executable file nor one on PATH"
    raise click.BadParameter(problem, param_hint="'COMMAND'")


class _WorkCommand(click.Command):
    """``work -- true`` takes ``true`` for WORKER and leaves no COMMAND: say WORKER is missing."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)
        rest = super().parse_args(ctx, args)
        if "--" in given and not ctx.params.get("command"):
            after = given[given.index("--") + 1 :]
            if after and after[0] == ctx.params.get("worker"):
                raise click.UsageError(
                    "Missing argument 'WORKER': name the worker before --, e.g. "
                    f"rtms-lifecycle work worker-7 -- {shlex.join(after)}",
                    ctx,
                )
        return rest


@click.command(cls=_WorkCommand, context_settings={"help_option_names": ["-h", "--help"]})
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
    type=Duration(0.3, 86_400),
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How long a claim holds unless renewed (0.3s to 1d; 30, 30s, 2m); renewed every "
    "third of it.",
)
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    help="Only this product; repeat for several.",
)
@ACCOUNT_OPTION
@click.option(
    "--grace",
    type=Duration(0, 3600),
    default=None,
    metavar="DURATION",
    help="Between SIGTERM and SIGKILL of any child being stopped: its stream stopped, its "
    "claim lost, a failover, or work stopping (0s to 1h, shorter than --lease). A claim "
    "unrenewed this long before its lease ends has its child ended, SIGKILL by the lease's "
    "end.  [default: 10s, or a third of --lease if that is less]",
)
@click.option(
    "--backoff",
    type=Duration(0, 86_400),
    default="5s",
    show_default=True,
    metavar="DURATION",
    help="How long a stream whose child exited on its own is passed over (0s to 1d); doubled "
    "after each child that ran less than a lease, up to 10 times it or 5m, whichever is less.",
)
@click.option(
    "--poll",
    type=Duration(0.05, 3600),
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="Between looks for a free stream while none is (0.05s to 1h).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (docs/cli.md).")
@click.option(
    "--child-output",
    type=click.Choice([LINES, INHERIT]),
    default=LINES,
    show_default=True,
    help="lines: each line a child writes to stdout or stderr is written by work, with its "
    "stream id (with --json a child_output object); inherit: the children write to work's own "
    "stdout (stderr with --json) and stderr, unmarked.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def work(
    app: App,
    worker: str,
    most: int,
    lease: float,
    scopes: tuple[str, ...],
    account_id: str | None,
    grace: float | None,
    backoff: float,
    poll: float,
    as_json: bool,
    child_output: str,
    command: tuple[str, ...],
) -> None:
    """Claim up to --max live streams as WORKER and run COMMAND once for each.

    The child finds its stream in RTMS_STREAM_ID, RTMS_SERVER_URLS, RTMS_SCOPE, RTMS_SCOPE_ID,
    RTMS_OPERATOR_ID, RTMS_ACCOUNT_ID, RTMS_CLAIM_TOKEN (fence writes with it) and RTMS_WORKER,
    and the database work uses in RTMS_LIFECYCLE_DB. It gets SIGTERM when its stream stops or
    the claim is lost; when Zoom fails over to new server URLs it is replaced by a new child
    under the same claim. One that exits on its own has its stream claimed again after
    --backoff, what it left in its process group killed. Ctrl-C ends every child and releases
    every claim. Put COMMAND after `--`:

        rtms-lifecycle work worker-7 --max 20 -- python join.py
    """
    from rtms_lifecycle.tracking import check_worker

    try:
        check_worker(worker)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'WORKER'") from None
    _check_command(command)
    if grace is not None and grace >= lease:
        raise click.BadParameter(
            f"{grace:g}s is not shorter than --lease ({lease:g}s): a child whose claim goes "
            "unrenewed is ended --grace before its lease ends",
            param_hint="'--grace'",
        )
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
        child_output=child_output,
        # As given: the child may hand it to tools other than ours (psql reads postgresql://).
        db=app.given_db,
    )
    supervisor.run()
    if supervisor.signalled == signal.SIGINT:
        raise interrupted("Interrupted: every child ended, every claim released.")
