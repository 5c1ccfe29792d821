"""Reading a request body with a size limit, for the API, the web page and SCIM alike.

A declared ``Content-Length`` over the limit is refused before anything is read, and a
body streamed without one is refused as soon as it passes the limit, so no client can make
the server buffer more than ``limit`` bytes.
"""

from __future__ import annotations

from starlette.requests import Request

from keyward.errors import KeywardError


class BodyTooLarge(KeywardError):
    """A request body over its endpoint's limit (413)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; ``BodyTooLarge`` beyond."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
