"""Pagination: the pure decisions (next page? next cursor?) and the walkers that use them.

Three styles (contract 4.7): offset lists `{data, hasMore, total}`, message lists with
timestamp cursors `{data, hasMore}`, and the delivery log `{items, total, offset, limit}`.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    """One page of results.

    `items` are the page's items (converted), `has_more` whether a next page exists,
    `total` the count over all pages when the server said, `offset` and `limit` those the
    page was fetched with, and `raw` the decoded body.
    """

    items: list[T]
    has_more: bool
    total: int | None = None
    offset: int = 0
    limit: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def page_items(body: Any) -> list[Any]:
    """The item list of a page body: `data`, else `items` (delivery log, D24), else a bare list."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("data", "items"):
            items = body.get(key)
            if isinstance(items, list):
                return items
    return []


def has_more(body: Any, offset: int, count: int, limit: int | None) -> bool:
    """Whether a page of `count` items at `offset` has a next page: `hasMore` if present;
    else `offset + count < total`; else a full page means more (contract D29)."""
    if isinstance(body, dict) and isinstance(body.get("hasMore"), bool):
        return bool(body["hasMore"])
    total = body.get("total") if isinstance(body, dict) else None
    if isinstance(total, int):
        return offset + count < total
    return limit is not None and count >= limit > 0


def parse_offset_page(body: Any, offset: int, limit: int | None,
                      convert: Callable[[Any], T] = lambda item: item) -> Page[T]:
    """A Page from an offset-style (or delivery log) body fetched at `offset` with `limit`,
    each item passed through `convert`."""
    items = page_items(body)
    total = body.get("total") if isinstance(body, dict) else None
    return Page(
        items=[convert(item) for item in items],
        has_more=bool(items) and has_more(body, offset, len(items), limit),
        total=total if isinstance(total, int) else None,
        offset=offset,
        limit=limit,
        raw=body if isinstance(body, dict) else {"data": body},
    )


def walk_offset(fetch: Callable[[int | None, int], Page[T]], limit: int | None = None,
                offset: int = 0, max_items: int | None = None) -> Iterator[T]:
    """Yield items across pages, at most `max_items`; `fetch(limit, offset)` returns a Page."""
    remaining = max_items
    while remaining is None or remaining > 0:
        page = fetch(limit, offset)
        items = page.items if remaining is None else page.items[:remaining]
        yield from items
        if remaining is not None:
            remaining -= len(items)
        if not page.has_more:
            return
        offset += len(page.items)


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from an ISO-8601 string (with `Z` or an offset); None if unparseable."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_timestamp(value: object) -> str:
    """A cursor from a datetime or an ISO-8601 string: UTC with `Z` (contract D28).

    :raises ValueError: `value` is not a timestamp.
    """
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def message_time(item: dict[str, Any]) -> datetime | None:
    """When a message happened, for cursors."""
    return parse_timestamp(item.get("receivedAt") or item.get("createdAt") or "")


def next_cursor(items: list[dict[str, Any]], direction: Literal["older", "newer"]
                ) -> tuple[Literal["before", "after"], str] | None:
    """contract D28 cursor for the page after `items`: `before` the oldest, or `after` the newest.

    Returns ("before"|"after", timestamp) or None when no item has a usable time.
    """
    times = [t for t in (message_time(item) for item in items) if t is not None]
    if not times:
        return None
    if direction == "older":
        return ("before", format_timestamp(min(times)))
    return ("after", format_timestamp(max(times)))


def walk_cursor(fetch: Callable[..., Any], direction: Literal["older", "newer"] = "older",
                limit: int | None = None, start: object = None, max_items: int | None = None
                ) -> Iterator[dict[str, Any]]:
    """Yield messages page by page; `fetch(limit, before=..., after=...)` returns a raw body.

    `direction` "older" walks back in time with `before`, "newer" forward with `after`
    (never both, D28); `start` is the first cursor timestamp. Items are de-duplicated by
    `id` in case cursors are inclusive; a page with nothing new ends the walk. Each page is
    yielded newest first going back, oldest first going forward.

    :raises ValueError: `direction` is neither.
    """
    if direction not in ("older", "newer"):
        raise ValueError("direction must be 'older' or 'newer'")
    param = "before" if direction == "older" else "after"
    cursor = {param: format_timestamp(start)} if start is not None else {}
    seen: set[Any] = set()
    remaining = max_items
    while remaining is None or remaining > 0:
        body = fetch(limit, **cursor)
        items = page_items(body)
        fresh = [item for item in items if item.get("id") not in seen]
        # Yield in walking order (newest first going back, oldest first going forward)
        # whatever order the page came in.
        fresh.sort(key=lambda item: message_time(item) or _EPOCH, reverse=direction == "older")
        if remaining is not None:
            fresh = fresh[:remaining]
            remaining -= len(fresh)
        seen.update(item.get("id") for item in fresh)
        yield from fresh
        more = isinstance(body, dict) and body.get("hasMore") is True
        nxt = next_cursor(items, direction)
        if not more or not fresh or nxt is None:
            return
        cursor = {nxt[0]: nxt[1]}
