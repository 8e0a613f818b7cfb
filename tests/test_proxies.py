"""Voice turns through real nginx, HAProxy and Caddy with the shipped configurations, in front
of gunicorn started as the shipped systemd unit starts it."""

import gzip
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.agent.base import Agent
from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.proxies import STARTERS, start_haproxy, start_nginx, unit_command
from tests.servers import free_port, post_stream, start_gunicorn

pytestmark = pytest.mark.slow

LONG_TOOL_SECONDS = 62  # longer than nginx's default 60 s and Debian HAProxy's 50 s


class Deployment:
    """gunicorn as deploy/systemd/agentphone-web.service runs it, and proxies in front."""

    def __init__(self, tmp_path, agent_env):
        self.tmp_path, self.agent_env = tmp_path, agent_env
        self.started = []

    def web(self, **env):
        port = free_port()
        argv, unit_env = unit_command("agentphone-web.service", port)
        env = {"AGENTPHONE_WEBHOOK_SECRET": SECRET, **self.agent_env, **unit_env,
               **{k: str(v) for k, v in env.items()}}
        server = start_gunicorn(self.tmp_path, env, command=argv, port=port)
        self.started.append(server)
        return port

    def proxy(self, start, upstream_port, **kwargs):
        proxy = start(self.tmp_path, upstream_port, **kwargs)
        self.started.append(proxy)
        return proxy

    def stop(self):
        for part in reversed(self.started):
            part.stop()


@pytest.fixture
def deployment(tmp_path, effects_agent):
    deployment = Deployment(tmp_path, effects_agent.env)
    yield deployment
    deployment.stop()


def voice_turn(url, text, timeout=60, **headers):
    # A call of its own: equal signed bytes under a second delivery id would be a replay.
    raw, signed = signed_request(SECRET, payload("voice", text, callId=f"call_{uuid.uuid4().hex}"))
    return post_stream(url + "/webhook", raw, {**signed, **headers}, timeout=timeout)


@pytest.mark.parametrize("name", sorted(STARTERS))
def test_each_line_passes_the_proxy_at_once_uncompressed(deployment, name):
    port = deployment.web(TEST_TOOL_SECONDS=2, VOICE_FILLER_AFTER=0)
    proxy = deployment.proxy(STARTERS[name], port)
    response, lines = voice_turn(proxy.url, "proxied", **{"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert "Content-Encoding" not in response.headers
    assert [obj for _, obj in lines] == [{"text": "Checking.", "interim": True},
                                         {"text": "Still here.", "interim": True},
                                         {"text": "Tool said done for proxied."}]
    # Both interim lines reached the caller while the 2 s tool was still running.
    assert lines[1][0] < 1.5 and lines[-1][0] >= 2


def test_haproxy_compressing_json_leaves_voice_replies_alone(deployment):
    port = deployment.web(TEST_TOOL_SECONDS=1, VOICE_FILLER_AFTER=0)
    every_type = "compression type text/html text/plain text/css"
    proxy = deployment.proxy(start_haproxy, port, extra={
        every_type: every_type + " application/json application/x-ndjson"})
    health = requests.get(proxy.url + "/healthz", headers={"Accept-Encoding": "gzip"},
                          stream=True, timeout=10)
    assert health.headers["Content-Encoding"] == "gzip"  # compression is really on
    assert gzip.decompress(health.raw.read())
    response, lines = voice_turn(proxy.url, "no-transform", **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in response.headers
    assert lines[0][0] < 0.9 and [obj["text"] for _, obj in lines][-1] == (
        "Tool said done for no-transform.")


def test_turn_longer_than_the_proxies_default_timeouts_gets_its_final_line(deployment):
    silent = deployment.web(TEST_TOOL_SECONDS=LONG_TOOL_SECONDS, VOICE_TIMEOUT=120,
                            VOICE_FILLER_AFTER=0)
    talking = deployment.web(TEST_TOOL_SECONDS=LONG_TOOL_SECONDS, VOICE_TIMEOUT=120)
    shipped = [deployment.proxy(start, silent) for start in STARTERS.values()]
    defaults = {"nginx": (start_nginx, {"proxy_read_timeout 150s;": "proxy_read_timeout 60s;"}),
                "haproxy": (start_haproxy, {"timeout server 150s": "timeout server 50s"})}
    cut = [deployment.proxy(start, silent, extra=extra) for start, extra in defaults.values()]
    kept_alive = [deployment.proxy(start, talking, extra=extra)
                  for start, extra in defaults.values()]
    proxies = shipped + cut + kept_alive
    with ThreadPoolExecutor(len(proxies)) as pool:
        results = list(pool.map(lambda p: _final_text(p.url), proxies))
    done = "Tool said done for long."
    # The shipped timeouts hold a turn silent for longer than the defaults...
    assert [final for final, _ in results[:len(shipped)]] == [done] * len(shipped)
    # ...which cut the same turn (the control: this test can fail)...
    assert [final for final, _ in results[len(shipped):len(shipped) + len(cut)]] == [None] * 2
    # ...unless filler lines keep bytes flowing.
    for final, texts in results[len(shipped) + len(cut):]:
        assert final == done
        assert texts.count(Agent.fillers[0]) >= 3


def _final_text(url):
    """(text of the final line or None, every line's text) of one long voice turn."""
    try:
        _, lines = voice_turn(url, "long", timeout=LONG_TOOL_SECONDS + 30)
    except requests.RequestException:
        return None, []
    texts = [obj["text"] for _, obj in lines]
    final = lines[-1][1] if lines else {}
    return (None if final.get("interim") else final.get("text")), texts
