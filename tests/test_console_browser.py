"""The operator console in a real browser (Debian's chromium, driven by Selenium) against a
real gunicorn after simulated traffic: what a person sees on each page.

With CONSOLE_SCREENSHOTS=DIR set, each page is also saved as DIR/console-PAGE.png (1280x800):
that is how the screenshots in docs/ are made.
"""

import contextlib
import os
import re
import time
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.fake_agentphone import API_KEY, FakeAgentPhone, json_reply, offset_list, sse_reply
from tests.servers import post_stream, start_gunicorn

pytestmark = pytest.mark.slow

PASSWORD = "open sesame 42"
SENT = {"id": "msg_1", "status": "sent", "channel": "sms", "from_number": "+15551234567",
        "to_number": "+15559876543", "media_urls": [], "reply_to_message_id": None,
        "reply_parent_unresolved": False}
PLATFORM_DELIVERIES = [
    {"id": "d_ok", "messageId": "msg_1", "eventType": "agent.message", "channel": "sms",
     "status": "delivered", "httpStatus": 200, "errorMessage": None, "responseBody": "OK",
     "attemptCount": 1, "lastAttemptAt": "2026-12-01T12:00:01Z", "nextRetryAt": None,
     "createdAt": "2026-12-01T12:00:00Z"},
    {"id": "d_failed", "messageId": "msg_2", "eventType": "agent.call_ended",
     "channel": "voice", "status": "failed", "httpStatus": 500,
     "errorMessage": "Internal Server Error", "responseBody": "", "attemptCount": 3,
     "lastAttemptAt": "2026-12-01T12:10:00Z", "nextRetryAt": None,
     "createdAt": "2026-12-01T12:00:00Z"},
]
STATS = {"total": 2, "success": 1, "failed": 1, "pending": 0, "successRate": 50.0,
         "byEventType": {}, "byHour": []}
LIVE_CALL = "call_live_7"


@pytest.fixture(scope="module")
def fake_api():
    fake = FakeAgentPhone().start()
    # The first reply sent is refused: with JOB_MAX_ATTEMPTS=1 its job is dead at once.
    fake.on("POST", "/v1/messages",
            json_reply({"error": {"message": "to_number is invalid"}}, 400), SENT)
    fake.on("GET", "/v1/webhooks/deliveries", offset_list(PLATFORM_DELIVERIES, "items"))
    fake.on("GET", "/v1/webhooks/deliveries/stats", STATS)
    fake.on("GET", f"/v1/calls/{LIVE_CALL}/transcript/stream", sse_reply(
        f'event: connected\ndata: {{"callId":"{LIVE_CALL}","status":"in-progress",'
        '"direction":"inbound","fromNumber":"+15559876543","toNumber":"+15551234567"}\n\n',
        'event: turn\ndata: {"role":"agent","content":"Hello, relayed live!",'
        '"createdAt":"t1"}\n\n', 30))
    yield fake
    fake.stop()
    assert fake.violations == []


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake_api):
    tmp = tmp_path_factory.mktemp("console")
    effects = tmp / "effects.txt"
    effects.touch()
    server = start_gunicorn(tmp, {
        "AGENTPHONE_WEBHOOK_SECRET": SECRET, "CONSOLE_PASSWORD": PASSWORD,
        "DEMO_TOOL_LATENCY": "0.05", "JOB_MAX_ATTEMPTS": "1", "VOICE_TIMEOUT": "60",
        "AGENTPHONE_API_KEY": API_KEY, "AGENTPHONE_API_URL": fake_api.url,
        "AGENTS": "agt_slow=tests.agents:slow_agent", "TEST_TOOL_SECONDS": "120",
        "TEST_EFFECTS_FILE": str(effects), "LOG_LEVEL": "INFO",
    }, workers=2)
    simulate_traffic(server)
    yield server
    server.stop()


def deliver(server, body, delivery_id=None):
    raw, headers = signed_request(SECRET, body, delivery_id)
    response = requests.post(server.webhook, data=raw, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return headers["X-Webhook-ID"]


def voice(server, text, call_id):
    resp, lines = post_stream(server.webhook, *signed_request(
        SECRET, payload("voice", text, callId=call_id)))
    assert resp.status_code == 200 and "text" in lines[-1][1]


def simulate_traffic(server):
    """A refused reply first (its job dies), then calls with turns, an ended call, texts."""
    deliver(server, payload("sms", "Please text me back", conversationId="conv_dead"),
            delivery_id="whd_text_dead")
    wait_for(lambda: dead_jobs(server) == 1, "the refused reply's job is dead")
    for n, text in enumerate(["Hi there", "Where is order 4521?", "What are your hours?"]):
        voice(server, text, "call_shop_1")
        voice(server, f"Question {n}", "call_shop_2")
    deliver(server, payload("call_ended", callId="call_shop_1",
                            summary="Caller asked where order 4521 is."))
    for n in range(3):
        deliver(server, payload("sms", f"Are you open on day {n}?", conversationId=f"conv_{n}"))
    raw, headers = signed_request(SECRET, b"{not json")
    assert requests.post(server.webhook, data=raw, headers=headers,
                         timeout=10).status_code == 400
    wait_for(lambda: "Caller asked where order 4521 is." in console_get(server, "/calls"),
             "the ended call is recorded")


def dead_jobs(server):
    return len(re.findall(r'action="/console/jobs/\d+/retry"', console_get(server, "/jobs")))


def console_get(server, path):
    response = requests.get(server.url + "/console" + path, auth=("ops", PASSWORD), timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def wait_for(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout:.0f} s: {what}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_window_size(1280, 800)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def signed_in(browser, server):
    """The browser, signed in to the console."""
    browser.get(server.url + "/console/login")
    if browser.current_url.startswith(server.url + "/console/login"):
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        WebDriverWait(browser, 10).until(lambda d: "/login" not in d.current_url)
    return browser


def text_of(browser, element_id):
    """An element's visible text, read in one step (the "Now" page swaps its parts in)."""
    return browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText.trim() : null;",
        element_id)


def rows(browser, table_id):
    """The visible text of each row of a table, header excluded."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tr')].slice(1)"
        ".map(r => r.innerText.trim().replace(/\\s+/g, ' '));", table_id)


def screenshot(browser, name):
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / f"console-{name}.png"))


@contextlib.contextmanager
def held_turn(server, text):
    """A voice turn whose tool runs for minutes, open until the block ends (then hung up)."""
    body = payload("voice", text, callId=LIVE_CALL)
    body["agentId"] = "agt_slow"
    raw, headers = signed_request(SECRET, body)
    response = requests.post(server.webhook, data=raw, headers=headers, stream=True,
                             timeout=30)
    lines = response.iter_lines()  # kept: dropping the iterator would close the connection
    try:
        next(lines)  # the interim line: the turn is now in flight
        yield headers["X-Webhook-ID"]
    finally:
        response.close()


def test_login_is_required(browser, server):
    browser.delete_all_cookies()
    browser.get(server.url + "/console/jobs")
    assert browser.current_url.startswith(server.url + "/console/login")
    assert browser.find_elements(By.ID, "now") == []
    browser.find_element(By.ID, "password").send_keys("not it")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    # The click returns before the answer to the form has loaded.
    WebDriverWait(browser, 10).until(lambda d: text_of(d, "error") is not None)
    assert text_of(browser, "error") == "That password is not right."
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/console/jobs"))
    assert browser.find_element(By.CSS_SELECTOR, "nav a.here").text == "Jobs"
    assert requests.get(server.url + "/console/", allow_redirects=False,
                        timeout=10).status_code == 302


def test_now_shows_traffic_latency_jobs_and_a_turn_in_flight(signed_in, server):
    browser = signed_in
    with held_turn(server, "Please hold while I think") as delivery_id:
        browser.get(server.url + "/console/")
        WebDriverWait(browser, 15).until(lambda d: text_of(d, "in-flight") == "1")
        held = rows(browser, "in-flight-table")
        assert len(held) == 1 and delivery_id in held[0] and LIVE_CALL in held[0]
        assert "Please hold while I think" in held[0]
        assert re.search(r"\d+\.\d s$", held[0])
        # 6 turns, an ended call, 4 texts, a bad body and the held turn in 5 minutes.
        per_minute = float(text_of(browser, "per-minute"))
        assert 2.0 <= per_minute <= 4.0
        p50, p99 = text_of(browser, "first-line").split(" / ")
        assert re.fullmatch(r"\d+(\.\d)? ms", p50) and re.fullmatch(r"\d+(\.\d)? ms", p99)
        assert float(p50.split()[0]) <= float(p99.split()[0])
        assert text_of(browser, "dead-jobs") == "1"
        assert browser.execute_script(
            "return document.getElementById('dead-jobs').classList.contains('bad')")
        assert text_of(browser, "store") == "ok" and text_of(browser, "api") == "ok"
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart circle")
        screenshot(browser, "now")
    WebDriverWait(browser, 15).until(lambda d: text_of(d, "in-flight") == "0")


def test_now_updates_without_a_reload(signed_in, server):
    browser = signed_in
    browser.get(server.url + "/console/")
    browser.execute_script("window.notReloaded = 'still here';")
    before = text_of(browser, "per-minute")
    for n in range(3):
        deliver(server, payload("sms", f"live update {n}", conversationId="conv_live"))
    WebDriverWait(browser, 15).until(lambda d: text_of(d, "per-minute") != before)
    assert float(text_of(browser, "per-minute")) > float(before)
    assert browser.execute_script("return window.notReloaded;") == "still here"


def test_calls_list_and_a_call_with_its_turns(signed_in, server):
    browser = signed_in
    with held_turn(server, "Are you still there?"):
        browser.get(server.url + "/console/calls")
        listed = rows(browser, "calls")
        live = next(r for r in listed if r.startswith(LIVE_CALL))
        ended = next(r for r in listed if r.startswith("call_shop_1"))
        assert "in-progress" in live
        assert "completed" in ended and "Caller asked where order 4521 is." in ended
        assert "+15559876543" in ended and "330" in ended
        screenshot(browser, "calls")
        browser.find_element(By.LINK_TEXT, LIVE_CALL).click()
        WebDriverWait(browser, 10).until(lambda d: "Hello, relayed live!" in text_of(d, "live"))
        assert "(in progress)" in browser.find_element(By.TAG_NAME, "h2").text
    browser.get(server.url + "/console/calls")
    browser.find_element(By.LINK_TEXT, "call_shop_1").click()
    assert browser.current_url.endswith("/console/calls/call_shop_1")
    assert text_of(browser, "summary") == "Caller asked where order 4521 is."
    assert "user: Where is my order?" in text_of(browser, "transcript")
    turns = rows(browser, "turns")
    said = [t for t in turns if "answered" in t]
    assert len(said) == 3 and turns[-1].endswith("call ended")
    assert "Where is order 4521?" in said[1]
    for turn in said:
        first, final = re.findall(r"(\d+(?:\.\d)?) ms", turn)[-2:]
        assert float(first) <= float(final)
    screenshot(browser, "call")


def test_messages_show_replies_and_their_state(signed_in, server):
    browser = signed_in
    browser.get(server.url + "/console/messages")
    listed = rows(browser, "messages")
    dead = next(r for r in listed if "conv_dead" in r)
    assert "Please text me back" in dead and dead.endswith("failed")
    answered = [r for r in listed if re.search(r"conv_\d", r)]
    assert len(answered) == 3 and all(r.endswith("sent") for r in answered)
    assert "Are you open on day 1?" in answered[1]
    screenshot(browser, "messages")


def test_jobs_retry_button_and_csrf(signed_in, server, fake_api):
    browser = signed_in
    browser.get(server.url + "/console/jobs")
    dead = rows(browser, "jobs-dead")
    assert len(dead) == 1 and "text_message" in dead[0] and "to_number is invalid" in dead[0]
    screenshot(browser, "jobs")
    job_id = dead[0].split()[0]
    # Without the form's token the same request is refused, signed in or not.
    session = requests.Session()
    for cookie in browser.get_cookies():
        session.cookies.set(cookie["name"], cookie["value"])
    url = f"{server.url}/console/jobs/{job_id}/retry"
    assert session.post(url, timeout=10).status_code == 403
    assert session.post(url, data={"csrf": "forged"}, timeout=10).status_code == 403
    assert requests.post(url, auth=("ops", PASSWORD), timeout=10).status_code == 403
    assert rows(browser, "jobs-dead") == dead
    sent_before = fake_api.count("POST", "/v1/messages")
    browser.find_element(By.CSS_SELECTOR, "#jobs-dead button").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/console/jobs"))

    def retried():
        browser.refresh()
        return rows(browser, "jobs-dead") == ["None."]

    wait_for(retried, "the retried job leaves the dead list")
    wait_for(lambda: fake_api.count("POST", "/v1/messages") == sent_before + 1,
             "the reply is sent again")
    browser.get(server.url + "/console/")
    WebDriverWait(browser, 10).until(lambda d: text_of(d, "dead-jobs") == "0")


def test_deliveries_failures_first_beside_the_platforms_view(signed_in, server):
    browser = signed_in
    browser.get(server.url + "/console/deliveries")
    listed = rows(browser, "deliveries")
    assert "400" in listed[0] and "unparsed" in listed[0]
    assert len(listed) >= 12
    voice = [r for r in listed if "agent.message voice answered" in r]
    assert voice and all(re.search(r"\d ms \d", r) for r in voice)
    platform = rows(browser, "platform")
    assert platform[0].startswith("d_failed") and platform[1].startswith("d_ok")
    assert text_of(browser, "platform-stats") == (
        "Last 24 h: 2 total, 1 delivered, 1 failed, 0 pending.")
    screenshot(browser, "deliveries")


def test_nothing_is_fetched_from_outside(signed_in, server):
    browser = signed_in
    for path in ("/", "/calls", "/calls/call_shop_1", "/messages", "/jobs", "/deliveries"):
        browser.get(server.url + "/console" + path)
        assert browser.execute_script("return typeof window.htmx") == "object" or path != "/"
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(server.url + "/") for url in fetched), fetched
        scripts = [s.get_attribute("src")
                   for s in browser.find_elements(By.CSS_SELECTOR, "script[src]")]
        assert scripts == [server.url + "/console/static/htmx.min.js"]
        sheets = [s.get_attribute("href")
                  for s in browser.find_elements(By.CSS_SELECTOR, "link[rel=stylesheet]")]
        assert sheets == [server.url + "/console/static/console.css"]
