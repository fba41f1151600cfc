"""What every command shares: the database, the consoles, the tracker, and how errors end a run.

Nothing heavy is touched until a command runs: ``rtms-lifecycle COMMAND --help`` parses the
group's options before Click sees the ``--help``, so the group only notes the database it was
given; the URL is checked, and Rich's consoles are made, when a command's body first needs them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

import click

from rtms_lifecycle.cli.errors import BadInput, cli_errors
from rtms_lifecycle.cli.params import parse_min_event_time
from rtms_lifecycle.cli.rendering import emit_json, make_console, print_table
from rtms_lifecycle.defaults import DEFAULT_MIN_EVENT_TIME, MIN_EVENT_TIME_ENV

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from rtms_lifecycle.tracker import Tracker

__all__ = ["App", "Group", "current_app", "pass_app"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Record(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


_Found = TypeVar("_Found", bound=_Record)


class Group(click.Group):
    """Maps errors to one line and an exit code; gives every command the global options."""

    group_class = type  # subgroups (`db`) are Groups too, so their commands get --db

    def invoke(self, ctx: click.Context) -> Any:
        with cli_errors():
            return super().invoke(ctx)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # `rtms-lifecycle streams --db x` works like `rtms-lifecycle --db x streams`.
        if not any(param.name == "db" for param in cmd.params):
            cmd.params.append(_db_after_command())
        super().add_command(cmd, name)


@dataclass
class App:
    """What every command shares: the database URL, the consoles and a lazily opened tracker."""

    #: ``--db`` as given: a URL or a file path, checked when a command first uses it.
    given_db: str
    db_given: bool
    _db: str | None = field(default=None, repr=False)
    _tracker: Tracker | None = field(default=None, repr=False)

    def use_db(self, text: str, given: bool) -> None:
        """Take ``--db`` (a URL or a file path); :attr:`db` checks it."""
        self.given_db, self.db_given, self._db = text, given, None

    @property
    def db(self) -> str:
        """The database URL as the commands use it; a URL that cannot work is refused."""
        if self._db is None:
            from rtms_lifecycle.store import urls as _dburl

            plain = _dburl.plain_sqlite_file(self.given_db)
            if plain is not None:
                self._db = plain[0]
            else:
                url = _dburl.parse(self.given_db)
                _dburl.refuse_memory(url)
                self._db = url.render_as_string(hide_password=False)
        return self._db

    @functools.cached_property
    def out(self) -> Console:
        return make_console()

    @functools.cached_property
    def err(self) -> Console:
        return make_console(stderr=True)

    def tracker(self, *, create: bool = True) -> Tracker:
        """The tracker; with ``create=False`` (read commands) a missing SQLite file is an error."""
        from rtms_lifecycle.tracker import Tracker

        # Opened on first use, so that `db upgrade` and `db current` never auto-migrate.
        if self._tracker is None:
            if not create:
                self.require_database()
            self._tracker = Tracker(self.db, min_event_time=_min_event_time_from_env())
        return self._tracker

    def require_database(self) -> None:
        """Reading never creates a database: refuse a SQLite file that does not exist."""
        from rtms_lifecycle.store import urls as _dburl

        _dburl.require_existing(self.db)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()

    @property
    def shown_db(self) -> str:
        """The database URL without its password: it ends up in terminals and logs."""
        from rtms_lifecycle.store import urls as _dburl

        return _dburl.shown_url(self.db)

    def command_prefix(self) -> str:
        """How to repeat this invocation's database choice in a suggested command."""
        return f"rtms-lifecycle --db {self.shown_db}" if self.db_given else "rtms-lifecycle"

    def show(
        self,
        as_json: bool,
        found: Sequence[_Found],
        table: Callable[[Sequence[_Found]], RenderableType],
        empty: str | None = None,
    ) -> None:
        """What a read command found: a JSON list of the records' documented shapes, or a table;
        ``empty``, the sentence that stands for a table without rows."""
        if as_json:
            emit_json([record.as_dict() for record in found])
        elif not found and empty is not None:
            self.say(empty)
        else:
            print_table(self.out, table(found))

    def say(self, sentence: str) -> None:
        """One plain sentence on stdout: no markup, no highlighting of its numbers."""
        self.out.print(sentence, markup=False, highlight=False)


def _min_event_time_from_env() -> int:
    # The bound ``serve`` reads from the environment: ``ingest`` and ``deliveries reprocess``
    # judge event times by it too, so that reprocessing does not let in what serve refused.
    text = os.environ.get(MIN_EVENT_TIME_ENV, "")
    if not text.strip():
        return DEFAULT_MIN_EVENT_TIME
    try:
        return parse_min_event_time(text)
    except ValueError as exc:
        raise BadInput(f"{MIN_EVENT_TIME_ENV}: {exc}") from None


def current_app() -> App:
    """The running command's :class:`App`, its database checked before the command does anything."""
    app = click.get_current_context().find_object(App)
    assert app is not None, "every command runs under the rtms-lifecycle group"
    _ = app.db  # a bad --db is refused first, as when the group itself took it
    return app


def pass_app(command: Callable[Concatenate[App, _P], _R]) -> Callable[_P, _R]:
    """Call the command with the :class:`App` as its first argument."""

    @functools.wraps(command)
    def with_app(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return command(current_app(), *args, **kwargs)

    return with_app


def _set_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    app = ctx.find_object(App)
    if value is not None and app is not None:
        app.use_db(value, given=True)


def _db_after_command() -> click.Option:
    return click.Option(
        ["--db"],
        metavar="URL",
        expose_value=False,
        callback=_set_db,
        help="The database, as the global --db (which may also come after the command).",
    )
