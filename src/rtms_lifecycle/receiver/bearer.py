"""The one rule for reading ``Authorization: Bearer <token>``: the read API, ``/metrics`` and
the dashboard all read the header with it, so a token one accepts none refuses."""

from __future__ import annotations

from starlette.requests import HTTPConnection

__all__ = ["SeveralAuthorizations", "bearer_token"]


class SeveralAuthorizations(ValueError):
    """More than one ``Authorization`` header: which one counts would depend on their order."""


def bearer_token(request: HTTPConnection) -> str | None:
    """The bearer token the request carries, or None; the scheme's case and the spaces around
    the token do not matter (``Bearer  TOKEN`` is ``TOKEN``). Raises
    :class:`SeveralAuthorizations` for several headers."""
    given = request.headers.getlist("authorization")
    if len(given) > 1:
        raise SeveralAuthorizations("more than one Authorization header")
    if not given:
        return None
    scheme, _, credentials = given[0].strip(" \t").partition(" ")
    token = credentials.strip(" \t")
    return token if scheme.lower() == "bearer" and token else None
