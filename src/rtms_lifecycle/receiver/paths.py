"""Route parameters that hold a stream id: any text, a newline included.

Starlette's ``path`` convertor (``.*``) stops at a newline, so a stored stream whose id holds
one (a signed delivery's id is its sender's text) answered 404 on its own page. ``anytext``
matches every character.
"""

from __future__ import annotations

from typing import Final

from starlette.convertors import Convertor, register_url_convertor

__all__ = ["STREAM_PATH"]


class _AnyText(Convertor[str]):
    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())

#: The path of one stream under a router's prefix.
STREAM_PATH: Final = "/streams/{stream_id:anytext}"
