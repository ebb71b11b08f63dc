"""A request-body size limit, enforced before anything parses the body."""

from __future__ import annotations

import json


class BodyLimit:
    """ASGI middleware: a body larger than `max_bytes` gets a 413 with a JSON body.

    A declared Content-Length past the limit is refused without reading the body; a body
    without one (chunked) is read up to the limit and refused as soon as it passes it.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(send, 400, "Content-Length is not an integer")
                return
            if size > self.max_bytes:
                await self._refuse(send, 413, self._message(size))
                return
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send, 413, self._message(size, partial=more))
                return
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self, size: int, partial: bool = False) -> str:
        over = "more than " if partial else ""
        return f"request body of {over}{size} bytes > the limit of {self.max_bytes} bytes"

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail, "reason": "body_too_large"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
