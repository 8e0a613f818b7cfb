"""A fake OpenAI-compatible Chat Completions endpoint on 127.0.0.1, with the quirks real
servers show only sometimes.

Each request to ``POST /v1/chat/completions`` takes the next scripted reply. Streamed, it is
sent as real Server-Sent Events: ``data: {chat.completion.chunk}`` lines with content deltas,
tool-call deltas split into index/id/name/argument fragments, a ``finish_reason`` chunk and
``data: [DONE]``; not streamed (``"stream": false``), as one ``chat.completion``. Scripts are
lists of steps:

    fake.script(pause(1.0), text("Hello there. "), text("How can I help?"))
    fake.script(tool_call(0, "lookup_order", {"order_id": "4521"}))
    fake.script(tool_call(0, "lookup_order", {}, repeat_name=True))  # name in every chunk
    fake.script(text("Half a sentence"), drop())       # the connection breaks mid-stream
    fake.script(text("Half a sentence"), no_finish())  # [DONE] without a finish_reason
    fake.script(text("Rambling"), finish("length"))    # cut at max_tokens
    fake.script(text("Half"), error_event("overloaded"))
    fake.script(empty())                              # 200 with an empty body
    fake.script(status(500))                          # an HTTP error instead of a stream

Like llama-cpp-python, it rejects an assistant message whose ``content`` is null (HTTP 500).
"""

import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Step:
    kind: str
    value: object = None
    extra: dict = field(default_factory=dict)


def text(content):
    return Step("text", content)


def pause(seconds):
    return Step("pause", seconds)


def tool_call(index, name, arguments, call_id=None, pieces=3, repeat_name=False):
    """One tool call, its JSON arguments cut into ``pieces`` fragments over several chunks;
    ``repeat_name``: the id and whole name again in every chunk (llama-cpp-python)."""
    return Step("tool", name, {"index": index, "id": call_id or f"call_{index}_{name}",
                               "arguments": json.dumps(arguments), "pieces": pieces,
                               "repeat_name": repeat_name})


def no_finish():
    """End with ``data: [DONE]`` but no finish_reason (a server cutting a generation short)."""
    return Step("no_finish")


def finish(reason):
    """End with this finish_reason instead of stop / tool_calls."""
    return Step("finish", reason)


def error_event(message):
    """An error object in the stream, then the end of the body."""
    return Step("error", message)


def raw(data):
    """One event whose data is ``data`` as it is (a malformed chunk, say); not streamed: the
    whole answer."""
    return Step("raw", data)


def empty():
    """Answer 200 with an empty body."""
    return Step("empty")


def drop():
    """Stop mid-stream: the server breaks the connection without finishing the body."""
    return Step("drop")


def status(code, body=None):
    return Step("status", code, {"body": body or {"error": {"message": "upstream exploded",
                                                            "type": "server_error"}}})


class _Dropped(Exception):
    pass


class _QuietHandler(WSGIRequestHandler):
    def log(self, type, message, *args):  # the dropped stream is on purpose: no traceback
        pass


class FakeLLM:
    def __init__(self):
        self.scripts = []
        self.requests = []  # decoded JSON bodies, in arrival order
        self.started_at = []  # monotonic time each request arrived
        self.finished_at = []  # monotonic time each stream sent its last byte
        self._lock = threading.Lock()
        self._server = None

    def script(self, *steps):
        self.scripts.append(list(steps))
        return self

    @property
    def url(self):
        """The base URL to configure (``LLM_BASE_URL``)."""
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self):
        self._server = make_server("127.0.0.1", 0, self, threaded=True,
                                   request_handler=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return Response("not found", 404)(environ, start_response)
        body = request.get_json()
        with self._lock:
            self.requests.append(body)
            self.started_at.append(time.monotonic())
            steps = self.scripts.pop(0) if self.scripts else [text("(no script left)")]
        if any(m.get("role") == "assistant" and m.get("content") is None
               for m in body.get("messages", ())):
            steps = [status(500, {"error": {"message": "messages: content: Input should be a "
                                                      "valid string", "type": "validation"}})]
        if steps and steps[0].kind == "status":
            response = Response(json.dumps(steps[0].extra["body"]), status=steps[0].value,
                                mimetype="application/json")
        elif steps and steps[0].kind == "empty":
            response = Response(b"", mimetype="text/event-stream" if body.get("stream")
                                else "application/json")
        elif not body.get("stream"):
            response = Response(json.dumps(self._completion(steps, body.get("model", "fake"))),
                                mimetype="application/json")
        else:
            response = Response(self._events(steps, body.get("model", "fake")),
                                mimetype="text/event-stream")
        return response(environ, start_response)

    def _completion(self, steps, model):
        """The whole answer as one ``chat.completion`` (a request with stream false)."""
        content, calls, reason = "", [], "stop"
        for step in steps:
            if step.kind == "pause":
                time.sleep(step.value)
            elif step.kind == "text":
                content += step.value
            elif step.kind == "tool":
                reason = "tool_calls"
                calls.append({"id": step.extra["id"], "type": "function",
                              "function": {"name": step.value,
                                           "arguments": step.extra["arguments"]}})
            elif step.kind == "finish":
                reason = step.value
            elif step.kind == "raw":
                return json.loads(step.value)  # the whole answer, as it is
        with self._lock:
            self.finished_at.append(time.monotonic())
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{
                    "index": 0, "finish_reason": reason, "logprobs": None,
                    "message": {"role": "assistant", "content": content or None,
                                "tool_calls": calls or None}}]}

    def _events(self, steps, model):
        created = int(time.time())

        def chunk(delta, finish=None):
            doc = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                   "model": model, "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish}]}
            return f"data: {json.dumps(doc)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""})
        finish = "stop"
        for step in steps:
            if step.kind == "pause":
                time.sleep(step.value)
            elif step.kind == "text":
                yield chunk({"content": step.value})
            elif step.kind == "tool":
                finish = "tool_calls"
                args, pieces = step.extra["arguments"], step.extra["pieces"]
                size = max(1, -(-len(args) // pieces))
                head = {"index": step.extra["index"], "id": step.extra["id"],
                        "type": "function"}
                yield chunk({"tool_calls": [{**head, "function": {"name": step.value,
                                                                  "arguments": ""}}]})
                for start in range(0, len(args), size):
                    piece = {"arguments": args[start:start + size]}
                    if step.extra["repeat_name"]:
                        yield chunk({"tool_calls": [{**head, "function": {
                            "name": step.value, **piece}}]})
                    else:
                        yield chunk({"tool_calls": [{"index": step.extra["index"],
                                                     "function": piece}]})
            elif step.kind == "finish":
                finish = step.value
            elif step.kind == "no_finish":
                finish = None
            elif step.kind == "error":
                yield f"data: {json.dumps({'error': {'message': step.value}})}\n\n".encode()
                return
            elif step.kind == "raw":
                yield f"data: {step.value}\n\n".encode()
            elif step.kind == "drop":
                # Leave the body unfinished and close the socket under the client.
                raise _Dropped()
        if finish is not None:
            yield chunk({}, finish)
        with self._lock:
            self.finished_at.append(time.monotonic())
        yield b"data: [DONE]\n\n"


@pytest.fixture(name="fake_llm")
def fake_llm_fixture():
    fake = FakeLLM().start()
    yield fake
    fake.stop()
