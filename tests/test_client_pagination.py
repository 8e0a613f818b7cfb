import pytest

from app.agentphone.pagination import (
    format_timestamp,
    has_more,
    next_cursor,
    parse_offset_page,
    walk_cursor,
)
from tests.fake_agentphone import (  # noqa: F401
    api_fixture,
    cursor_list,
    fake_api_fixture,
    json_reply,
    make_api_fixture,
    offset_list,
)


def call(n):
    return {"id": f"call_{n:03}", "agentId": "agt_1", "fromNumber": "+1555000" + f"{n:04}",
            "toNumber": "+15551234567", "status": "completed", "startedAt": "2025-01-15T14:00:00Z"}


def message(n, key="fromNumber"):
    return {"id": f"msg_{n:03}", "body": f"text {n}", key: "+15559876543",
            "to": "+15551234567", "direction": "inbound", "channel": "sms",
            "receivedAt": f"2025-01-15T14:{n // 60:02}:{n % 60:02}Z"}


@pytest.mark.parametrize(("body", "offset", "count", "limit", "expected"), [
    ({"hasMore": True, "total": 3}, 0, 3, 3, True),      # hasMore wins
    ({"hasMore": False}, 0, 20, 20, False),
    ({"total": 42}, 20, 20, 20, True),                  # contract D29: no hasMore -> total
    ({"total": 40}, 20, 20, 20, False),
    ({"items": [], "total": 25, "offset": 0}, 0, 25, 50, False),
    ({}, 0, 20, 20, True),                              # neither: a full page means more
    ({}, 0, 7, 20, False),
    ([1, 2], 0, 2, None, False),
])
def test_has_more_decision(body, offset, count, limit, expected):
    assert has_more(body, offset, count, limit) is expected


def test_page_of_delivery_log_reads_items():
    page = parse_offset_page({"items": [{"id": "d1"}], "total": 3, "offset": 2, "limit": 1}, 2, 1)
    assert (page.items, page.has_more, page.total) == ([{"id": "d1"}], False, 3)


def test_empty_page_never_has_more():
    assert parse_offset_page({"data": [], "hasMore": True}, 0, 20).has_more is False


def test_offset_walk_over_calls(fake_api, api):
    fake_api.on("GET", "/v1/calls", offset_list([call(n) for n in range(45)]))
    calls = list(api.paginate(api.list_calls, status="completed", limit=20))
    assert [c.id for c in calls] == [f"call_{n:03}" for n in range(45)]
    pages = [(r.query.get("offset"), r.query["limit"]) for r in fake_api.requests]
    assert pages == [(None, "20"), ("20", "20"), ("40", "20")]
    assert all(r.query["status"] == "completed" for r in fake_api.requests)


def test_single_page_and_max_items(fake_api, api):
    fake_api.on("GET", "/v1/agents/agt_1/calls", offset_list([call(n) for n in range(5)]))
    page = api.list_agent_calls("agt_1", limit=2, offset=2)
    assert ([c.id for c in page.items], page.has_more, page.total) == (
        ["call_002", "call_003"], True, 5)
    assert len(list(api.paginate(api.list_agent_calls, "agt_1", limit=2, max_items=3))) == 3
    assert fake_api.count("GET", "/v1/agents/agt_1/calls") == 3


def test_calls_of_one_number(fake_api, api):
    fake_api.on("GET", "/v1/numbers/num_1/calls", offset_list([call(n) for n in range(3)]))
    page = api.list_number_calls("num_1", limit=2)
    assert ([c.id for c in page.items], page.has_more) == (["call_000", "call_001"], True)
    calls = api.paginate(api.list_number_calls, "num_1", limit=2)
    assert [c.id for c in calls] == ["call_000", "call_001", "call_002"]


def test_agent_list_without_has_more_uses_total(fake_api, api):
    agents = [{"id": f"agt_{n}", "name": f"Agent {n}"} for n in range(3)]

    def reply(request):  # OpenAPI's AgentListResponse: only data and total
        offset, limit = int(request.args.get("offset", 0)), int(request.args["limit"])
        return {"data": agents[offset:offset + limit], "total": len(agents)}

    fake_api.on("GET", "/v1/agents", lambda request: json_reply(reply(request)))
    assert [a.name for a in api.paginate(api.list_agents, limit=2)] == [
        "Agent 0", "Agent 1", "Agent 2"]


def test_delivery_log_walk(fake_api, api):
    items = [{"id": f"d{n}", "status": "failed", "httpStatus": 500, "attemptCount": 2}
             for n in range(7)]
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list(items, envelope="items"))
    got = list(api.paginate(api.list_deliveries, hours=24, limit=3))
    assert [d.id for d in got] == [f"d{n}" for n in range(7)]
    assert [d.http_status for d in got][:1] == [500]
    assert all(r.query["hours"] == "24" for r in fake_api.requests)


def test_format_timestamp_is_utc_with_z():
    assert format_timestamp("2025-01-15T16:00:00+02:00") == "2025-01-15T14:00:00Z"
    assert format_timestamp("2025-01-15T14:00:00") == "2025-01-15T14:00:00Z"
    with pytest.raises(ValueError):
        format_timestamp("yesterday")


def test_next_cursor_uses_oldest_or_newest_whatever_the_order():
    items = [message(5), message(1), message(9), {"id": "x"}]
    assert next_cursor(items, "older") == ("before", "2025-01-15T14:00:01Z")
    assert next_cursor(items, "newer") == ("after", "2025-01-15T14:00:09Z")
    assert next_cursor([{"id": "x"}], "older") is None


@pytest.mark.parametrize("inclusive", [False, True])
def test_cursor_walk_older_over_number_messages(fake_api, api, inclusive):
    fake_api.on("GET", "/v1/numbers/num_1/messages",
                cursor_list([message(n, "from_") for n in range(125)], inclusive=inclusive))
    got = list(api.iter_messages(number_id="num_1", limit=50))
    assert [m.id for m in got] == [f"msg_{n:03}" for n in reversed(range(125))]
    assert got[0].from_number == "+15559876543" and got[0].to_number == "+15551234567"
    queries = [r.query for r in fake_api.requests]
    assert "before" not in queries[0]
    assert all("after" not in q for q in queries)
    assert queries[1]["before"] == "2025-01-15T14:01:15Z"


def test_cursor_walk_newer_over_conversation_messages(fake_api, api):
    fake_api.on("GET", "/v1/conversations/conv_1/messages",
                cursor_list([message(n) for n in range(30)], inclusive=True))
    got = list(api.iter_messages(conversation_id="conv_1", direction="newer",
                                 start="2025-01-15T14:00:09Z", limit=8))
    assert [m.id for m in got] == [f"msg_{n:03}" for n in range(9, 30)]
    assert all("before" not in r.query for r in fake_api.requests)


def test_cursor_walk_stops_on_a_page_with_nothing_new():
    same = {"data": [message(1)], "hasMore": True}
    calls = []
    items = list(walk_cursor(lambda limit, **c: calls.append(c) or same, limit=1))
    assert [m["id"] for m in items] == ["msg_001"]
    assert len(calls) == 2


def test_messages_page_rejects_both_cursors(api):
    with pytest.raises(ValueError, match="not both"):
        api.messages_page(number_id="num_1", before="2025-01-01T00:00:00Z",
                          after="2025-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="exactly one"):
        api.messages_page(limit=5)


def test_messages_page(fake_api, api):
    fake_api.on("GET", "/v1/numbers/num_1/messages", cursor_list([message(n) for n in range(3)]))
    page = api.messages_page(number_id="num_1", limit=2, after="2025-01-15T14:00:00Z")
    assert [m.id for m in page.items] == ["msg_002", "msg_001"]
    assert page.has_more is False
    assert fake_api.last("GET", "/v1/numbers/num_1/messages").query["after"] == (
        "2025-01-15T14:00:00Z")


def test_walks_stop_fetching_once_max_items_is_reached(fake_api, api):
    fake_api.on("GET", "/v1/calls", offset_list([call(n) for n in range(10)]))
    fake_api.on("GET", "/v1/numbers/num_1/messages",
                cursor_list([message(n) for n in range(10)]))
    assert len(list(api.paginate(api.list_calls, limit=3, max_items=3))) == 3
    assert len(list(api.iter_messages(number_id="num_1", limit=3, max_items=3))) == 3
    assert list(api.paginate(api.list_calls, max_items=0)) == []
    assert len(fake_api.requests) == 2
