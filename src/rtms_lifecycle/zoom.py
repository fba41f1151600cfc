"""Connect a claimed stream with Zoom's RTMS SDK (``pip install 'rtms-lifecycle[zoom]'``).

:class:`ZoomStream` joins the stream of a claim, reports to the tracker when media connects and
disconnects, renews the claim while connected or rejoining, and leaves when the stream stops, the
claim is lost, or its lease is about to run out unrenewed (a database outage: another worker may
take the stream then). It needs of the tracker only :class:`ClaimTracker`.

The SDK's C library wants one OS thread to allocate, join, poll and release a client (releasing
one from another thread trips its assertions): every :class:`ZoomStream` of the process runs on
one thread, :func:`sdk_loop`, an asyncio loop where ``rtms.EventLoop.run_async`` polls beside
the coroutine that renews and leaves. Tracker calls go to one helper thread, in order, so that a
slow database never stalls the polling. docs/workers.md shows a worker;
docs/decisions/0092-zoom-sdk.md the protocol as the SDK speaks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from rtms_lifecycle.clock import format_time
from rtms_lifecycle.display import error_line
from rtms_lifecycle.exceptions import ClaimLost
from rtms_lifecycle.stop_reasons import StopReasonCategory, describe_stop_reason

__all__ = [
    "LEASE_RAN_OUT",
    "ClaimTracker",
    "ClaimView",
    "MediaCallback",
    "StreamView",
    "ZoomEnded",
    "ZoomStream",
    "check_tracker",
    "load_sdk",
    "sdk_loop",
    "signature",
]

_log = logging.getLogger("rtms_lifecycle.zoom")

#: What the SDK hands a media callback: the payload, its size, a timestamp (ms), and an
#: ``rtms.Metadata`` (``userId``, ``userName``).
MediaCallback = Callable[[bytes, int, int, Any], object]

DATA_CONNECTION_INTERRUPTED = 14  # Zoom's stop reason for a media connection interrupted
RECEIVER_REQUEST_CLOSE = 20  # Zoom's stop reason for an app that left on purpose
#: ``ZoomEnded.claim_lost`` when the stream was left because no renewal succeeded in time.
LEASE_RAN_OUT = "lease ran out unrenewed"


def load_sdk() -> Any:
    """The ``rtms`` module, or an ImportError naming the extra that installs it."""
    try:
        import rtms
    except ImportError as exc:
        raise ImportError(
            "rtms_lifecycle.zoom needs Zoom's RTMS SDK: pip install 'rtms-lifecycle[zoom]' "
            "(a binary wheel: Linux x86_64 and arm64, macOS)"
        ) from exc
    return rtms


def signature(client_id: str, client_secret: str, scope_id: str, stream_id: str) -> str:
    """The join signature: hex HMAC-SHA256 of ``client_id,scope_id,stream_id``.

    Computed here rather than by the SDK, which prefers the ``ZM_RTMS_CLIENT`` and
    ``ZM_RTMS_SECRET`` environment variables over the credentials it is given.
    """
    message = f"{client_id},{scope_id},{stream_id}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


class StreamView(Protocol):
    """What the adapter reads of a claimed stream (``rtms_lifecycle.Stream`` has it)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def scope_id(self) -> str | None: ...
    @property
    def server_url_list(self) -> list[str]: ...


class ClaimView(Protocol):
    """What the adapter reads of a claim: ``expires_at`` is when its lease ends (epoch ms)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def stream(self) -> StreamView: ...


ClaimT = TypeVar("ClaimT", bound=ClaimView)


class ClaimTracker(Protocol[ClaimT]):
    """What the adapter needs of a tracker. ``renew`` raises
    :class:`~rtms_lifecycle.exceptions.ClaimLost` once the claim is no longer the caller's."""

    def renew(self, claim: ClaimT) -> ClaimT: ...
    def release(self, claim: ClaimT, reason: str | None = None) -> object: ...
    def report_connected(self, claim: ClaimT, at_ms: int | None = None) -> object: ...
    def report_disconnected(
        self, claim: ClaimT, at_ms: int | None = None, reason: int | None = None
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class ZoomEnded:
    """Why :meth:`ZoomStream.run` returned.

    ``why`` is ``stopped`` (the stream ended: ``code`` is the SDK's leave reason), ``lost`` (the
    claim was lost: ``claim_lost`` is the tracker's reason, or :data:`LEASE_RAN_OUT` when no
    renewal succeeded before the lease's end), or ``requested`` (:meth:`stop`; ``code`` 20,
    RECEIVER_REQUEST_CLOSE, if it left a connected stream). ``release_failed`` is the error that
    kept a release from being written (the first line): the lease runs out instead.
    """

    why: str
    code: int | None = None
    claim_lost: str | None = None
    release_failed: str | None = None


@dataclass(frozen=True, slots=True)
class _Report:
    """A connection state to report: when it began (epoch ms) and, if down, the SDK's reason."""

    connected: bool
    at_ms: int
    reason: int | None = None


_sdk_lock = threading.Lock()
_sdk_loops: list[asyncio.AbstractEventLoop] = []


def sdk_loop() -> asyncio.AbstractEventLoop:
    """The process's one SDK thread, as an asyncio loop: every client lives and dies on it.

    The SDK initialises its C library on the thread of the first join; a join on another
    thread once that one had ended crashed the process (seen on loopback, in 1 run of 3).
    """
    with _sdk_lock:
        if not _sdk_loops:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rtms-sdk", daemon=True).start()
            _sdk_loops.append(loop)
        return _sdk_loops[0]


def _leave(client: Any) -> None:
    """Release ``client`` once; only on the thread that polls it (the SDK's rule)."""
    if not getattr(client, "_rtms_lifecycle_left", False):
        client._rtms_lifecycle_left = True
        client.leave()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a call's error seen: one nobody awaits any more would be logged with a traceback."""
    if not future.cancelled():
        future.exception()


def stream_ended(reason: int) -> bool:
    """Whether an SDK leave ``reason`` means the stream ended, rather than the connection.

    Zoom's stop reasons end the stream unless its failover guide says to reconnect; other codes
    (the SDK's own, such as 502 once the server stayed away) are connection failures.
    """
    described = describe_stop_reason(reason)
    return described.category is not StopReasonCategory.UNKNOWN and not (
        described.restart_connection
    )


_TRACKER_METHODS = ("renew", "release", "report_connected", "report_disconnected")


def check_tracker(tracker: object) -> None:
    """A TypeError unless ``tracker`` has the :class:`ClaimTracker` methods, and plain ones:
    they are called from a thread of the adapter's, where a coroutine would never run."""
    missing = [name for name in _TRACKER_METHODS if not callable(getattr(tracker, name, None))]
    if missing:
        raise TypeError(
            f"tracker: {type(tracker).__name__} has no {', '.join(missing)}; ZoomStream needs "
            "a ClaimTracker, such as rtms_lifecycle.Tracker"
        )
    if any(inspect.iscoroutinefunction(getattr(tracker, name)) for name in _TRACKER_METHODS):
        raise TypeError(
            f"tracker: {type(tracker).__name__}'s methods are coroutines, and ZoomStream calls "
            "its tracker from a thread of its own: pass async_tracker.sync (the Tracker on "
            "the same database) instead, and await stream.wait() in your event loop"
        )


class ZoomStream(Generic[ClaimT]):
    """One claimed stream, joined with Zoom's RTMS SDK until it stops or the claim is lost.

    Register media with the ``on_*_data`` callbacks (each is the SDK's own callback) or with
    ``configure``, called with each new ``rtms.Client`` before it joins (media parameters,
    participant events...). The SDK opens no media connection, and so never confirms a join,
    without at least one media callback.

    A leave for a connection failure (the SDK gives up after about 11 s of reconnecting), a
    refused join, or a join unanswered within ``join_timeout`` seconds is reported as
    disconnected, keeps the claim, and rejoins after ``rejoin_every`` seconds, twice as long
    after each join that fails in a row, up to ``rejoin_max``. A claim whose stream has no
    server URLs yet (its ``started`` event has not arrived) is held, and re-read on that same
    schedule, until they are known: then it is joined.

    While the database fails, renewals are retried every second (or ``renew_every``, if
    shorter); if none succeeds, the stream is left ``leave_margin`` seconds before the lease
    ends, and never joined again: :data:`LEASE_RAN_OUT`. Failed tracker calls are logged one
    line per outage, and never raised from :meth:`join`. The latest connection state that could
    not be reported is reported after the next successful renewal, if still current and the
    claim still held.
    """

    def __init__(
        self,
        tracker: ClaimTracker[ClaimT],
        claim: ClaimT,
        *,
        client_id: str,
        client_secret: str,
        on_audio_data: MediaCallback | None = None,
        on_transcript_data: MediaCallback | None = None,
        on_video_data: MediaCallback | None = None,
        on_deskshare_data: MediaCallback | None = None,
        configure: Callable[[Any], object] | None = None,
        renew_every: float = 10.0,
        rejoin_every: float = 1.0,
        rejoin_max: float = 30.0,
        leave_margin: float = 3.0,
        join_timeout: float = 30.0,
        poll_interval: float = 0.01,
    ) -> None:
        check_tracker(tracker)
        self._media = {
            "on_audio_data": on_audio_data,
            "on_transcript_data": on_transcript_data,
            "on_video_data": on_video_data,
            "on_deskshare_data": on_deskshare_data,
        }
        if configure is None and not any(self._media.values()):
            raise ValueError(
                "media: give at least one on_*_data callback or configure "
                "(the SDK confirms no join without a media connection)"
            )
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret: both are required to sign the join")
        for name, value in (
            ("renew_every", renew_every),
            ("rejoin_every", rejoin_every),
            ("rejoin_max", rejoin_max),
            ("join_timeout", join_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name}: must be a positive number of seconds, not {value!r}")
        if rejoin_max < rejoin_every:
            raise ValueError(
                f"rejoin_max: must be at least rejoin_every ({rejoin_every!r}), not {rejoin_max!r}"
            )
        if not leave_margin >= 0:
            raise ValueError(f"leave_margin: must be 0 or more seconds, not {leave_margin!r}")
        self._rtms = load_sdk()
        self._tracker = tracker
        self._claim = claim
        self._client_id = client_id
        self._client_secret = client_secret
        self._configure = configure
        self._renew_every = renew_every
        self._rejoin_every = rejoin_every
        self._rejoin_max = rejoin_max
        self._rejoin_delay = rejoin_every  # doubled by each failed join, reset by a good one
        self._join_timeout = join_timeout
        self._awaiting_urls = False  # said once: the claim is held until its URLs are known
        self._leave_margin_ms = round(leave_margin * 1000)
        self._lease_end = claim.expires_at  # epoch ms, as of the last renewal
        self._failing_since: float | None = None  # monotonic, the outage's first failed call
        self._failures = 0
        self._poll_interval = poll_interval
        self._connected = False
        self._reports = 0  # connection reports sent, to tell the latest
        self._unreported: _Report | None = None  # the latest report, if it failed
        self._catching_up: asyncio.Task[None] | None = None
        self._interrupted = False  # set by the SDK's interruption, cleared by the next frame
        self._stopping: asyncio.Event | None = None
        self._renew_now: asyncio.Event | None = None  # asks the renewals for one at once
        self._renewed: asyncio.Event | None = None  # set by each renewal that succeeds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._future: Future[ZoomEnded] | None = None
        self.ended: ZoomEnded | None = None

    @property
    def claim(self) -> ClaimT:
        """The claim as last renewed."""
        return self._claim

    @property
    def connected(self) -> bool:
        """Whether media is connected (a join confirmed, no disconnection since)."""
        return self._connected

    # -- driving ------------------------------------------------------------------------

    def run(self) -> ZoomEnded:
        """Join and stay until the stream stops, the claim is lost, or :meth:`stop`."""
        return self.start().result()

    def start(self) -> ZoomStream[ClaimT]:
        """Join on the SDK's thread and return; :meth:`join` waits for the end."""
        Path("logs").mkdir(exist_ok=True)  # the SDK's C library logs to ./logs/, which must exist
        self._future = asyncio.run_coroutine_threadsafe(self._run(), sdk_loop())
        return self

    def result(self, timeout: float | None = None) -> ZoomEnded:
        """How the stream ended, once it has (waiting up to ``timeout`` seconds)."""
        if self._future is None:
            raise RuntimeError("not started: call start() first")
        self.ended = self._future.result(timeout)
        return self.ended

    def stop(self) -> None:
        """Leave and release the claim; safe from any thread."""
        if self._future is None:
            return
        self._started.wait()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)

    async def wait(self) -> ZoomEnded:
        """How the stream ended, awaited on the caller's event loop (an asyncio app's way to
        :meth:`result`; the stream runs on the SDK's thread all the same)."""
        if self._future is None:
            raise RuntimeError("not started: call start() first")
        self.ended = await asyncio.wrap_future(self._future)
        return self.ended

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end (up to ``timeout`` seconds); whether it ended."""
        if self._future is None:
            return self.ended is not None
        try:
            self.result(timeout)
        except FutureTimeout:
            return False
        return True

    # -- the SDK's thread ---------------------------------------------------------------

    async def _run(self) -> ZoomEnded:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._renew_now, self._renewed = asyncio.Event(), asyncio.Event()
        self._started.set()
        # Not a with block: its exit would wait, on the SDK's thread, for a call hung on an
        # unreachable database.
        calls = ThreadPoolExecutor(1, thread_name_prefix="rtms-tracker")
        renewing = asyncio.create_task(self._renew(calls))
        try:
            while True:
                if renewing.done() or self._until_fence() <= 0:  # never join an unheld lease
                    return await self._finish(calls, renewing, None)
                urls = bool(self._claim.stream.server_url_list)
                if urls:
                    ended = await self._session(calls, renewing)
                    if ended is not None:
                        return ended
                else:  # the SDK refuses a join without URLs, and says so only in its log
                    self._no_urls_yet()
                    self._renewed.clear()  # a renewal meanwhile reads the stream too
                until = None if urls else self._renewed
                if not await self._hold(renewing, self._rejoin_delay, until):
                    return await self._finish(calls, renewing, None)
                self._rejoin_delay = min(self._rejoin_delay * 2, self._rejoin_max)
                if not (self._claim.stream.server_url_list or self._renewed.is_set()):
                    # A renewal reads the stream again: its started event may have come.
                    self._renewed.clear()
                    self._renew_now.set()
                    if not await self._hold(renewing, until=self._renewed):
                        return await self._finish(calls, renewing, None)
        finally:
            renewing.cancel()
            if self._catching_up is not None:
                self._catching_up.cancel()
            calls.shutdown(wait=False)

    async def _hold(
        self,
        renewing: asyncio.Task[str],
        seconds: float | None = None,
        until: asyncio.Event | None = None,
    ) -> bool:
        """Wait ``seconds``, or until ``until`` is set, holding the claim; False if the worker
        stops or the renewals end (the claim lost, or its lease about to run out) first."""
        assert self._stopping is not None
        stopping = asyncio.create_task(self._stopping.wait())
        waits: set[asyncio.Future[Any]] = {stopping, renewing}
        if until is not None:
            waits.add(asyncio.create_task(until.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits - {renewing}:
                task.cancel()
        return not (renewing.done() or self._stopping.is_set())

    def _no_urls_yet(self) -> None:
        if not self._awaiting_urls:
            self._awaiting_urls = True
            _log.warning(
                "%s: its server URLs are not known yet (its started event has not arrived); "
                "holding the claim, and joining once a renewal finds them",
                self._claim.stream_id,
            )

    async def _call(self, calls: ThreadPoolExecutor, fn: Callable[[], object]) -> object:
        return await asyncio.get_running_loop().run_in_executor(calls, fn)

    async def _try(
        self, calls: ThreadPoolExecutor, what: str, fn: Callable[[], object]
    ) -> str | None:
        """A tracker call whose failure is logged (once per outage), not raised: None if it
        succeeded, else the error's first line. :class:`ClaimLost` is raised."""
        try:
            await self._call(calls, fn)
        except ClaimLost:
            raise
        except Exception as exc:
            return self._failed(what, exc)
        self._answered()
        return None

    async def _report(self, calls: ThreadPoolExecutor, report: _Report) -> None:
        """Report a connection state. If that fails, it is kept (the latest only: a newer
        report supersedes it) for :meth:`_catch_up`. :class:`ClaimLost` is raised."""
        self._reports += 1
        number, claim = self._reports, self._claim
        state = "connected" if report.connected else "disconnected"

        def send() -> object:
            if report.connected:
                return self._tracker.report_connected(claim, at_ms=report.at_ms)
            return self._tracker.report_disconnected(
                claim, at_ms=report.at_ms, reason=report.reason
            )

        try:
            await self._call(calls, send)
        except ClaimLost:
            self._unreported = None
            raise
        except Exception as exc:
            self._failed(f"report the stream {state}", exc)
            if number == self._reports and not isinstance(exc, ValueError):  # else no retry helps
                self._unreported = report
            return
        if number == self._reports:
            self._unreported = None
        self._answered()

    def _catch_up(self, calls: ThreadPoolExecutor) -> None:
        """After a renewal: report the state a failed report left unsaid, if still current.

        A task of its own, so that a report hung on the database never keeps the renewals from
        leaving at the fence; a lost claim is the next renewal's to learn."""
        report = self._unreported
        if report is None or (self._catching_up is not None and not self._catching_up.done()):
            return
        self._unreported = None
        if report.connected != self._connected:
            return

        async def again() -> None:
            with contextlib.suppress(ClaimLost):
                await self._report(calls, report)

        self._catching_up = asyncio.create_task(again())

    def _failed(self, what: str, exc: BaseException) -> str:
        """Count a failed tracker call; the first of an outage is said, with what it means."""
        error = error_line(exc)
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            _log.warning(
                "%s: could not %s (%s); retrying quietly: the stream is left at %s unless a "
                "renewal succeeds before (its lease ends at %s)",
                self._claim.stream_id,
                what,
                error,
                format_time(self._lease_end - self._leave_margin_ms),
                format_time(self._lease_end),
            )
        return error

    def _answered(self) -> None:
        """A tracker call succeeded: say the end of an outage."""
        if self._failing_since is not None:
            _log.warning(
                "%s: the database answers again after %.1f s (%d calls failed)",
                self._claim.stream_id,
                time.monotonic() - self._failing_since,
                self._failures,
            )
            self._failing_since, self._failures = None, 0

    def _until_fence(self) -> float:
        """Seconds until the stream must be left, unless a renewal extends the lease."""
        return (self._lease_end - self._leave_margin_ms - _now_ms()) / 1000

    async def _renew(self, calls: ThreadPoolExecutor) -> str:
        """Renew until the claim is lost (the tracker's reason) or the lease is about to run
        out unrenewed (:data:`LEASE_RAN_OUT`)."""
        failed = False
        while True:
            left = self._until_fence()
            # After a success, at least one more try before the fence; after a failure, soon.
            wait = min(1.0, self._renew_every, left) if failed else min(self._renew_every, left / 2)
            assert self._renew_now is not None
            assert self._renewed is not None
            with contextlib.suppress(TimeoutError):  # or at once when asked
                await asyncio.wait_for(self._renew_now.wait(), max(wait, 0.0))
            self._renew_now.clear()
            left = self._until_fence()
            if left <= 0:
                return self._ran_out()
            claim = self._claim
            call = asyncio.get_running_loop().run_in_executor(calls, self._tracker.renew, claim)
            call.add_done_callback(_retrieved)  # also when no one waits for it any more
            done, _ = await asyncio.wait({call}, timeout=left)
            if not done:  # hung on the database past the fence: its answer comes too late
                return self._ran_out()
            try:
                renewed = call.result()
            except ClaimLost as lost:
                return lost.reason
            except Exception as exc:  # the lease outlives a failed renewal: try again soon
                self._failed("renew the claim", exc)
                failed = True
                continue
            self._claim, self._lease_end, failed = renewed, renewed.expires_at, False
            self._renewed.set()
            self._answered()
            self._catch_up(calls)

    def _ran_out(self) -> str:
        """Say why the stream is left: the lease ends soon, or (the process was frozen, say)
        ended already, unrenewed."""
        late = (_now_ms() - self._lease_end) / 1000
        if late >= 0:
            _log.warning(
                "%s: the lease ended at %s (%.0f s ago) without a renewal; leaving the stream "
                "(another worker may hold it already)",
                self._claim.stream_id,
                format_time(self._lease_end),
                late,
            )
        else:
            _log.warning(
                "%s: no renewal succeeded; leaving the stream before its lease ends at %s "
                "(in %.1f s; another worker may claim it then)",
                self._claim.stream_id,
                format_time(self._lease_end),
                -late,
            )
        return LEASE_RAN_OUT

    async def _finish(
        self, calls: ThreadPoolExecutor, renewing: asyncio.Task[str], code: int | None
    ) -> ZoomEnded:
        """Between joins: the claim was lost or ran out, or the worker asked to stop."""
        if renewing.done():
            return ZoomEnded("lost", claim_lost=renewing.result())
        if self._until_fence() <= 0:
            renewing.cancel()
            return ZoomEnded("lost", claim_lost=self._ran_out())
        return await self._release(calls, "worker stopped", ZoomEnded("requested", code))

    async def _release(self, calls: ThreadPoolExecutor, reason: str, ended: ZoomEnded) -> ZoomEnded:
        """Release the claim; ``ended``, saying so if the release could not be written."""
        claim, self._unreported = self._claim, None  # nothing to report for a released claim
        try:
            error = await self._try(
                calls, "release the claim", lambda: self._tracker.release(claim, reason=reason)
            )
        except ClaimLost:  # nothing left to release
            return ended
        if error is None:
            return ended
        _log.warning(
            "%s: the claim was not released (%s): its lease runs out at %s",
            claim.stream_id,
            error,
            format_time(self._lease_end),
        )
        return replace(ended, release_failed=error)

    async def _session(
        self, calls: ThreadPoolExecutor, renewing: asyncio.Task[str]
    ) -> ZoomEnded | None:
        """One client, from join to leave; None to rejoin."""
        assert self._stopping is not None
        events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        client = self._client(events)
        sdk_loop = self._rtms.EventLoop(poll_interval=self._poll_interval)
        sdk_loop.add(client)
        stream = self._claim.stream
        try:
            client.join(
                meeting_uuid=stream.scope_id,
                rtms_stream_id=stream.stream_id,
                server_urls=",".join(stream.server_url_list),
                signature=signature(
                    self._client_id, self._client_secret, stream.scope_id or "", stream.stream_id
                ),
            )
        except Exception as exc:  # the SDK's own checks: tried again, as for a refusal
            _log.warning("joining %s failed (%s)", stream.stream_id, error_line(exc))
            return None  # the finally below is not reached: nothing polls this client
        polling = asyncio.create_task(sdk_loop.run_async())
        stopping = asyncio.create_task(self._stopping.wait())
        # The SDK answers a join (confirmed or refused) within about 10 s, unless its join
        # failed on the poll's thread: it logs that, and never answers.
        answer_by: float | None = time.monotonic() + self._join_timeout

        async def leave() -> None:
            """Release the client (on this thread, the SDK's) and poll no more: a poll between
            a leave and the reports after it segfaulted the process (2 runs of 4, on loopback)."""
            _leave(client)
            sdk_loop.stop()
            await polling

        try:
            while True:
                getting = asyncio.create_task(events.get())
                unanswered = None if answer_by is None else max(answer_by - time.monotonic(), 0)
                done, _ = await asyncio.wait(
                    {getting, stopping, renewing},
                    timeout=unanswered,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    getting.cancel()
                    _log.warning(
                        "joining %s got no answer in %g s; joining again",
                        stream.stream_id,
                        self._join_timeout,
                    )
                    return None
                if getting not in done:
                    getting.cancel()
                    await leave()
                    return await self._left_by_us(calls, renewing)
                kind, value = getting.result()
                if kind in ("joined", "left"):
                    answer_by = None
                try:
                    ended = await self._event(calls, leave, kind, value)
                except ClaimLost as lost:  # a report can learn it before a renewal does
                    self._connected = False
                    return ZoomEnded("lost", claim_lost=lost.reason)
                if ended == "rejoin":
                    return None
                if ended is not None:
                    return ended
        finally:
            stopping.cancel()
            await leave()  # whatever happened

    async def _left_by_us(
        self, calls: ThreadPoolExecutor, renewing: asyncio.Task[str]
    ) -> ZoomEnded:
        if renewing.done():
            lost = renewing.result()
            if lost == "stopped" and self._connected:
                await self._left_stopped(calls)
            self._connected = False  # taken, expired: another's claim, nothing more to report
            return ZoomEnded("lost", claim_lost=lost)
        if not self._connected:
            return await self._finish(calls, renewing, None)
        self._connected = False
        try:
            await self._report(calls, _Report(False, _now_ms(), RECEIVER_REQUEST_CLOSE))
        except ClaimLost as lost:  # lost meanwhile: nothing to release
            return ZoomEnded("lost", claim_lost=lost.reason)
        return await self._finish(calls, renewing, RECEIVER_REQUEST_CLOSE)

    async def _left_stopped(self, calls: ThreadPoolExecutor) -> None:
        """Say we left a stream Zoom stopped (a stop ends the claim, not this word): else
        ``connected_after_stop()`` would list it for good."""
        with contextlib.suppress(ClaimLost):  # the stream is over either way
            await self._report(calls, _Report(False, _now_ms(), RECEIVER_REQUEST_CLOSE))

    async def _event(
        self,
        calls: ThreadPoolExecutor,
        leave: Callable[[], Awaitable[None]],
        kind: str,
        value: int,
    ) -> ZoomEnded | Literal["rejoin"] | None:
        """Act on one SDK event: None to keep going, ``rejoin``, or how the stream ended."""
        claim = self._claim
        if (kind == "joined" and value == 0) or (kind == "resumed" and not self._connected):
            if kind == "joined":
                self._rejoin_delay = self._rejoin_every
            if not self._connected:
                self._connected = True
                await self._report(calls, _Report(True, _now_ms()))
            return None
        if kind == "joined":  # refused: a bad signature, or no media connection in time
            _log.warning("joining %s was refused (reason %s)", claim.stream_id, value)
            await leave()
            return "rejoin"
        if kind == "interrupted":
            if self._connected:
                self._connected = False
                at = value or _now_ms()
                await self._report(calls, _Report(False, at, DATA_CONNECTION_INTERRUPTED))
            return None
        if kind == "left":
            await leave()  # the SDK keeps a client after its on_leave until released
            if self._connected:
                self._connected = False
                await self._report(calls, _Report(False, _now_ms(), value))
            if not stream_ended(value):
                return "rejoin"
            name = describe_stop_reason(value).name
            return await self._release(
                calls, f"stream stopped: {name}", ZoomEnded("stopped", value)
            )
        return None

    def _client(self, events: asyncio.Queue[tuple[str, int]]) -> Any:
        """A new ``rtms.Client``: its callbacks run on this thread, inside the SDK's poll.

        No ``on_session_update``: rtms 1.1 builds its session from a field it never sets (the
        stream id) and crashed the process in about 1 join of 100 (seen in a core dump). Media
        flowing again after an interruption says the connection is back instead.
        """
        self._interrupted = False
        client = self._rtms.Client()
        client.on_join_confirm(lambda reason: events.put_nowait(("joined", int(reason))))
        client.on_leave(lambda reason: events.put_nowait(("left", int(reason))))

        def interrupted(timestamp: int) -> None:
            self._interrupted = True
            events.put_nowait(("interrupted", int(timestamp)))

        client.on_media_connection_interrupted(interrupted)
        for name, callback in self._media.items():
            if callback is not None:
                getattr(client, name)(self._watched(callback, events))
        if self._configure is not None:
            self._configure(client)
        return client

    def _watched(
        self, callback: MediaCallback, events: asyncio.Queue[tuple[str, int]]
    ) -> MediaCallback:
        """``callback``, first saying media is back if the connection was interrupted."""

        def back() -> None:
            if self._interrupted:
                self._interrupted = False
                events.put_nowait(("resumed", 0))

        if inspect.iscoroutinefunction(callback):  # the SDK awaits it on this loop

            async def watched_async(data: bytes, size: int, timestamp: int, metadata: Any) -> None:
                back()
                await cast(Awaitable[object], callback(data, size, timestamp, metadata))

            return watched_async

        def watched(data: bytes, size: int, timestamp: int, metadata: Any) -> object:
            back()
            return callback(data, size, timestamp, metadata)

        return watched
