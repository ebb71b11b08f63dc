"""The service's analyst-feedback endpoints: ``POST /reviews`` and ``GET /reviews``.

Mount with ``app.include_router(router)`` (the service's ``create_app(routers=[router])``). What
the router reads from ``app.state`` (every attribute optional):

* ``review_db``: the store's path; None or unset: `feedback.default_db()`.
* ``run_dir``: the run the service has loaded, reviewed when a request names no ``run_dir``.
* ``api_key``: guards ``POST`` (`security.require_api_key`, header ``X-API-Key``).

``POST /reviews`` records a verdict on a position the run took: the run must exist and its
``predictions.parquet`` must hold the (symbol, timestamp); the stored position is the run's own,
never the client's. The handlers are plain functions, so FastAPI runs their SQLite and parquet
I/O in its threadpool. Errors: 401 wrong key, 404 unknown run or untraded (symbol, timestamp),
422 an invalid field (FastAPI's validation body, or ``{"detail": "..."}`` naming the field).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from plusultra.errors import DataError
from plusultra.service.feedback import (
    ReviewStore,
    canonical_timestamp,
    default_db,
    find_trade,
)
from plusultra.service.security import require_api_key

MAX_TEXT = 4000  # characters of a rationale
MAX_LIST = 10_000  # rows one GET may return

router = APIRouter(prefix="/reviews", tags=["reviews"])


class ReviewIn(BaseModel):
    """A verdict on one traded position of a run."""

    symbol: str = Field(min_length=1, max_length=64, description="the symbol reviewed")
    timestamp: str = Field(
        min_length=10, max_length=40, description="the decision bar, ISO-8601 (2024-03-01)"
    )
    verdict: Literal["approve", "veto", "flag"]
    author: str = Field(min_length=1, max_length=200, description="who reviews")
    rationale: str = Field("", max_length=MAX_TEXT, description="why; required for a veto")
    run_dir: str | None = Field(
        None, max_length=4096, description="the run dir; null: the run the service serves"
    )


class ReviewOut(BaseModel):
    """A stored verdict."""

    id: int
    run_id: str
    run_dir: str | None
    symbol: str
    timestamp: str
    position: float | None
    verdict: str
    rationale: str
    author: str
    created_at: str


class ReviewList(BaseModel):
    """The verdicts matching a query."""

    count: int
    reviews: list[ReviewOut]


_STORES: dict[str, ReviewStore] = {}  # by path: each store checks its schema once


def get_store(request: Request) -> ReviewStore:
    """The store at ``app.state.review_db``, else `default_db()`."""
    path = getattr(request.app.state, "review_db", None)
    key = str(path if path is not None else default_db())
    if key not in _STORES:
        _STORES[key] = ReviewStore(key)
    return _STORES[key]


@router.post(
    "",
    status_code=201,
    response_model=ReviewOut,
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"description": "missing or wrong X-API-Key header (when a key is configured)"},
        404: {"description": "unknown run, or a position the run did not take"},
    },
)
def add_review(body: ReviewIn, request: Request) -> ReviewOut:
    """Approve, veto or flag the position a run took in one symbol at one decision bar."""
    run_dir = body.run_dir or getattr(request.app.state, "run_dir", None)
    if run_dir is None:
        raise HTTPException(422, "run_dir: required (the service has no run loaded)")
    if not body.author.strip():
        raise HTTPException(422, "author: must not be blank")
    if body.verdict == "veto" and not body.rationale.strip():
        raise HTTPException(422, "rationale: a veto needs one (why the position was wrong)")
    try:
        when = canonical_timestamp(body.timestamp)
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        trade = find_trade(run_dir, body.symbol, when)
    except DataError as exc:
        raise HTTPException(404, str(exc)) from None
    try:
        review = get_store(request).add(
            trade.run_id, trade.symbol, trade.timestamp, body.verdict, body.author,
            body.rationale, trade.position, trade.run_dir,
        )  # fmt: skip
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    return ReviewOut(**review.as_dict())


@router.get("", response_model=ReviewList)
def list_reviews(
    request: Request,
    run_id: str | None = Query(None, max_length=200, description="the catalogue's run id"),
    symbol: str | None = Query(None, max_length=64),
    verdict: Literal["approve", "veto", "flag"] | None = None,
    author: str | None = Query(None, max_length=200),
    since: str | None = Query(None, max_length=40, description="first decision bar, ISO-8601"),
    until: str | None = Query(None, max_length=40, description="last decision bar, ISO-8601"),
    limit: int = Query(1000, ge=1, le=MAX_LIST),
) -> ReviewList:
    """The verdicts matching every filter given, oldest decision bar first."""
    try:
        rows = get_store(request).list(
            run_id=run_id, symbol=symbol, verdict=verdict, author=author, since=since,
            until=until, limit=limit,
        )  # fmt: skip
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    return ReviewList(count=len(rows), reviews=[ReviewOut(**r.as_dict()) for r in rows])
