"""API-key protection of the service's mutating endpoints."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

HEADER = "X-API-Key"


def require_api_key(request: Request) -> None:
    """Refuse a mutating request whose X-API-Key header does not match app.state.api_key
    (401); with no key configured (app.state.api_key None) every request passes."""
    expected = getattr(request.app.state, "api_key", None)
    if expected is None:
        return
    given = request.headers.get(HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail=f"missing or wrong {HEADER} header")
