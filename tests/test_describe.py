"""LLM description generator against a local fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from processes import ROOT

from anim_clip.data.describe import ChatClient, describe_classes, fit_context, parse_descriptions
from anim_clip.data.descriptions import CONTEXT_LENGTH, load_descriptions, token_count
from anim_clip.errors import AnimClipError

KEY = "sk-test-SECRET-0123456789abcdef"


class FakeServer(ThreadingHTTPServer):
    """Answers chat completions with numbered lists that never repeat; can fail on demand."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.failures: list[int] = []  # statuses for the next requests, consumed in order
        self.reject: int | None = None  # a status returned for every request
        self.delay_first = 0.0  # seconds the first request waits before answering
        self.reply: str | None = None  # fixed content instead of the generated list
        self.raw: bytes | None = None  # a whole 200 body instead of a chat completion
        self.redirect: tuple[int, str] | None = None  # (status, Location) answered to every request
        self.per_reply = 4
        self.stall_from: int | None = None  # requests from this number on get no answer until `released`
        self.released = threading.Event()
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        """A client that timed out and hung up is expected here, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def content(self, number: int) -> str:
        if self.reply is not None:
            return self.reply
        lines = [f"{j + 1}. The animal keeps pose {number}-{j} with its head low." for j in range(self.per_reply)]
        return "\n".join(lines)


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            number = len(self.server.requests)
            status = self.server.failures.pop(0) if self.server.failures else self.server.reject
        if number == 1 and self.server.delay_first:
            time.sleep(self.server.delay_first)
        if self.server.stall_from is not None and number >= self.server.stall_from:
            self.server.released.wait(60)
        if self.path != "/v1/chat/completions":
            status = 404
        if self.server.redirect:
            self.send_response(self.server.redirect[0])
            self.send_header("Location", self.server.redirect[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif status:  # echo the auth header, as a careless server might
            self._send(status, {"error": {"message": f"nope, you sent {self.headers.get('Authorization')}"}})
        elif self.server.raw is not None:
            self._send(200, self.server.raw)
        else:
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": self.server.content(number)}}]})

    def do_GET(self) -> None:
        """Only a followed redirect (POST -> GET) comes here; recorded to see whether the key came along."""
        with self.server.lock:
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": None})
        self._send(404, {"error": {"message": "GET is not served"}})

    def _send(self, status: int, payload: dict | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@contextmanager
def serving() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.released.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server():
    with serving() as srv:
        yield srv


@pytest.fixture
def elsewhere():
    """A second server on another port of the same host."""
    with serving() as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib honours proxy variables; the fake server is local."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def key(monkeypatch) -> str:
    monkeypatch.setenv("ANIM_CLIP_TEST_KEY", KEY)
    return KEY


def client(server: FakeServer, tmp_path: Path | None = None, sleeps: list | None = None, **kw) -> ChatClient:
    return ChatClient(server.base_url, "fake-model", api_key_env="ANIM_CLIP_TEST_KEY", seed=0,
                      cache_dir=tmp_path / "cache" if tmp_path else None,
                      sleep=sleeps.append if sleeps is not None else (lambda s: None), **kw)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def prompts(server: FakeServer) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in server.requests]


def test_writes_k_rows_per_class(server, tmp_path, key):
    names = ["Running", "Eating, grazing", "Flying"]
    out = describe_classes(names, "action", 6, tmp_path / "d.csv", client(server, tmp_path), progress=True,
                           examples=[["Cheetah", "Ostrich"], [], ["Barn Owl"]])
    rows = read_csv(out)
    assert rows[0] == ["id", "name", "description"]
    assert [r[:2] for r in rows[1:]] == [[str(i), n] for i, n in enumerate(names) for _ in range(6)]
    assert all(len(set(r[2] for r in rows[1:][i * 6:(i + 1) * 6])) == 6 for i in range(3))
    assert load_descriptions(out, names) == [[r[2] for r in rows[1 + 6 * i:7 + 6 * i]] for i in range(3)]
    # 4 per reply → 2 requests per class, POSTed with the key and the OpenAI body
    assert len(server.requests) == 6
    assert all(r["auth"] == f"Bearer {KEY}" and r["path"] == "/v1/chat/completions" for r in server.requests)
    body = server.requests[0]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0.8 and body["messages"][0]["role"] == "system"
    assert '"Running"' in prompts(server)[0] and "Cheetah, Ostrich" in prompts(server)[0]
    assert "Write 6 different" in prompts(server)[0] and "Write 2 different" in prompts(server)[1]
    assert '"Eating, grazing"' in prompts(server)[2] and "include" not in prompts(server)[2]


def test_species_prompt_and_no_key_no_header(server, tmp_path, monkeypatch):
    monkeypatch.delenv("ANIM_CLIP_TEST_KEY", raising=False)
    describe_classes(["Abalone"], "species", 3, tmp_path / "s.csv", client(server), progress=False)
    assert server.requests[0]["auth"] is None
    assert 'visual appearance of the animal "Abalone"' in prompts(server)[0]


def test_retries_on_500_and_429_then_succeeds(server, key):
    server.failures = [500, 429, 503]
    sleeps: list[float] = []
    text = client(server, sleeps=sleeps, backoff=1.0).complete([{"role": "user", "content": "hi"}])
    assert text.startswith("1. The animal")
    assert len(server.requests) == 4
    assert len(sleeps) == 3 and all(0.5 * 2**i <= s <= 1.5 * 2**i for i, s in enumerate(sleeps))


def test_timeout_is_retried(server, key):
    server.delay_first = 0.6
    sleeps: list[float] = []
    client(server, sleeps=sleeps, timeout=0.2).complete([{"role": "user", "content": "hi"}])
    assert len(sleeps) == 1 and len(server.requests) == 2


def test_gives_up_with_one_clear_error(server, key, caplog):
    server.reject = 503
    with caplog.at_level(logging.WARNING), pytest.raises(AnimClipError) as err:
        client(server, max_retries=2).complete([{"role": "user", "content": "hi"}])
    message = str(err.value)
    assert len(server.requests) == 3
    assert server.base_url + "/chat/completions" in message and "3 tries" in message and "HTTP 503" in message
    assert KEY not in message and KEY not in caplog.text and "retry 2/2" in caplog.text


def test_unreachable_server_is_retried_then_named(server, key):
    url = server.base_url
    server.shutdown()
    server.server_close()
    sleeps: list[float] = []
    chat = ChatClient(url, "m", api_key_env="ANIM_CLIP_TEST_KEY", max_retries=2, sleep=sleeps.append, timeout=2)
    with pytest.raises(AnimClipError, match="failed after 3 tries") as err:
        chat.complete([{"role": "user", "content": "hi"}])
    assert url in str(err.value) and len(sleeps) == 2


def test_400_is_not_retried_and_never_shows_the_key(server, tmp_path, key, caplog, capsys):
    server.reject = 400
    with caplog.at_level(logging.DEBUG), pytest.raises(AnimClipError) as err:
        describe_classes(["Running"], "action", 3, tmp_path / "d.csv", client(server, tmp_path), progress=True)
    assert len(server.requests) == 1
    message = str(err.value)
    assert "rejected" in message and "HTTP 400" in message and server.base_url in message
    assert "<redacted>" in message  # the server echoed the key; the message hides it
    assert err.value.__cause__ is None and err.value.__suppress_context__
    captured = capsys.readouterr()
    for text in (message, repr(err.value), caplog.text, captured.out, captured.err):
        assert KEY not in text


def test_401_hints_at_the_variable_not_its_value(server, key):
    server.reject = 401
    with pytest.raises(AnimClipError, match=r"\$ANIM_CLIP_TEST_KEY, which is set") as err:
        client(server).complete([{"role": "user", "content": "hi"}])
    assert KEY not in str(err.value) and len(server.requests) == 1


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_another_port_is_not_followed_and_gets_no_key(server, elsewhere, key, status):
    server.redirect = (status, f"{elsewhere.base_url}/chat/completions")
    with pytest.raises(AnimClipError) as err:
        client(server).complete([{"role": "user", "content": "hi"}])
    assert elsewhere.requests == [] and len(server.requests) == 1  # urllib would follow a 302 with the key
    assert re.search(rf"redirects \(HTTP {status}\) to {elsewhere.base_url}.*--base-url", str(err.value))
    assert KEY not in str(err.value)


@pytest.mark.parametrize("url", ["http://me:sk-in-url@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api_key=sk-in-url"])
def test_credentials_written_into_the_base_url_are_refused(url):
    with pytest.raises(AnimClipError, match="--api-key-env") as err:
        ChatClient(url, "fake-model")
    assert "sk-in-url" not in str(err.value) and "127.0.0.1:9/v1" in str(err.value)


def test_key_never_reaches_written_files(server, tmp_path, key):
    server.failures = [500]
    describe_classes(["Running", "Sitting"], "action", 5, tmp_path / "out" / "d.csv", client(server, tmp_path),
                     progress=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "cache" for p in files) and any(p.name == "d.csv" for p in files)
    assert all(KEY.encode() not in p.read_bytes() for p in files)
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)


def test_cache_hit_sends_nothing(server, tmp_path, key):
    names = ["Running", "Sitting"]
    first = describe_classes(names, "action", 6, tmp_path / "a.csv", client(server, tmp_path), progress=False)
    sent = len(server.requests)
    assert sent == 4 and len(list((tmp_path / "cache").glob("*.json"))) == 4
    second = describe_classes(names, "action", 6, tmp_path / "b.csv", client(server, tmp_path), progress=False)
    assert len(server.requests) == sent
    assert first.read_text() == second.read_text()
    cached = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert cached["request"]["model"] == "fake-model" and "content" in cached


def test_resume_requests_only_missing_classes(server, tmp_path, key):
    names = ["Running", "Sitting", "Flying"]
    out = tmp_path / "d.csv"
    kept = [f"Running text {j} with legs" for j in range(4)]
    lines = ["id,name,description"] + [f"0,Running,{t}" for t in kept] + ["1,Sitting,half done one", "1,Sitting,half"]
    out.write_text("\n".join(lines) + "\n2,Flying,torn la")  # torn tail of a crashed append
    describe_classes(names, "action", 4, out, client(server), progress=False)
    assert len(server.requests) == 2
    assert '"Sitting"' in prompts(server)[0] and '"Flying"' in prompts(server)[1]
    assert load_descriptions(out, names)[0] == kept
    assert [len(d) for d in load_descriptions(out, names)] == [4, 4, 4]
    before = out.read_text()
    describe_classes(names, "action", 4, out, client(server), progress=False)  # all done: no request
    assert len(server.requests) == 2 and out.read_text() == before


def test_resume_fills_a_gap_in_class_order(server, tmp_path, key):
    names = ["Running", "Sitting", "Flying"]
    out = tmp_path / "d.csv"
    out.write_text("id,name,description\n" + "".join(f"2,Flying,flying text {j} here\n" for j in range(2)))
    describe_classes(names, "action", 2, out, client(server), progress=False)
    assert [r[0] for r in read_csv(out)[1:]] == ["0", "0", "1", "1", "2", "2"]


def test_resume_refuses_a_file_for_other_classes(server, tmp_path, key):
    out = tmp_path / "d.csv"
    out.write_text("id,name,description\n0,Swimming,a fish swims along\n")
    with pytest.raises(AnimClipError, match="Running"):
        describe_classes(["Running"], "action", 1, out, client(server), progress=False)
    out.write_text("id,name,description\n" + "".join(f"0,Running,text {j} of a run\n" for j in range(3)))
    with pytest.raises(AnimClipError, match="more than k=2"):  # made with a larger k: never drop its rows
        describe_classes(["Running"], "action", 2, out, client(server), progress=False)
    assert not server.requests and len(read_csv(out)) == 4


def test_too_few_distinct_descriptions_is_an_error_after_bounded_requests(server, tmp_path, key):
    server.reply = "1. The same dull sentence again.\n2. the same dull sentence, again!"
    with pytest.raises(AnimClipError, match="only 1 of 3 distinct"):
        describe_classes(["Running"], "action", 3, tmp_path / "d.csv", client(server), progress=False, max_requests=4)
    assert len(server.requests) == 4


def test_parse_messy_list():
    text = """<think>Let me think about 1. numbered things.</think>
Sure! Here are 6 descriptions:

1. The animal crouches low, legs tucked.
2) "A long body stretched flat along the branch."
(3) **Posture:** Head raised, ears forward, tail still.
 - • no wait
- Wings half open while it hops sideways.
* “Its tail flicks rapidly from side to side.”
10 - The neck bends down toward the water surface.
#. ignored
Hope this helps!
"""
    assert parse_descriptions(text) == [
        "The animal crouches low, legs tucked.",
        "A long body stretched flat along the branch.",
        "Posture: Head raised, ears forward, tail still.",
        "Wings half open while it hops sideways.",
        "Its tail flicks rapidly from side to side.",
        "The neck bends down toward the water surface.",
    ]
    assert parse_descriptions("A plain line about a dog.\n\nAnother plain line here.") == [
        "A plain line about a dog.", "Another plain line here."]


def test_overlong_descriptions_fit_clip_context():
    long = "The animal runs fast across open grassland. " + " ".join(["legs stretching far forward"] * 40) + "."
    fitted = fit_context(long)
    assert token_count(fitted) <= CONTEXT_LENGTH and fitted == "The animal runs fast across open grassland."
    assert token_count(fit_context("word " * 200)) <= CONTEXT_LENGTH
    assert fit_context("A short one.") == "A short one."


def test_bad_arguments():
    with pytest.raises(AnimClipError, match="http"):
        ChatClient("localhost:8000/v1", "m")
    with pytest.raises(AnimClipError, match="kind"):
        describe_classes(["a"], "plant", 1, Path("unused.csv"), None, progress=False)  # type: ignore[arg-type]


class Trickle(socketserver.StreamRequestHandler):
    """Answers a whole valid chat completion, headers included, one byte every 20 ms (~10 s in all)."""

    def handle(self) -> None:
        self.request.recv(65536)
        body = json.dumps({"choices": [{"message": {"content": "1. The animal trickles in slowly here."}}]})
        reply = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                 + body + " " * 300).encode()
        for i in range(len(reply)):
            try:
                self.request.sendall(reply[i:i + 1])
            except OSError:  # the client hung up: its deadline worked
                return
            time.sleep(0.02)


def test_a_server_that_trickles_bytes_is_cut_off_by_the_total_deadline(key):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        chat = ChatClient(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", api_key_env="ANIM_CLIP_TEST_KEY",
                          timeout=0.5, max_retries=1, sleep=lambda s: None)
        with pytest.raises(AnimClipError) as err:  # each byte comes well within the socket timeout
            chat.complete([{"role": "user", "content": "hi"}])
    finally:
        srv.shutdown()
        srv.server_close()
    assert "failed after 2 tries; last: TimeoutError: no whole reply within 0.5 s (--timeout)" in str(err.value)


@pytest.mark.parametrize("reply, message", [
    ({"choices": [{"message": {"content": ["1. a list", "2. not text"]}}]}, "choices[0].message.content is list"),
    ({"choices": [{"message": {"content": {"text": "x"}}}]}, "choices[0].message.content is dict"),
    ({"choices": [{"message": {"content": 42}}]}, "choices[0].message.content is int"),
    ({"choices": []}, "no choices[0].message.content (IndexError"),
    ({"error": "overloaded"}, "no choices[0].message.content (KeyError"),
    ([1, 2], "no choices[0].message.content (TypeError"),
    (b"<html>Bad gateway</html>", "not JSON: b'<html>Bad gateway</html>'"),
])
def test_a_malformed_reply_is_one_line_and_not_cached(server, tmp_path, key, reply, message):
    server.raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
    with pytest.raises(AnimClipError) as err:
        describe_classes(["Running"], "action", 2, tmp_path / "d.csv", client(server, tmp_path), progress=False)
    assert f"unexpected reply from {server.base_url}/chat/completions: {message}" in str(err.value)
    assert "\n" not in str(err.value) and len(server.requests) == 1  # not retried
    assert not list((tmp_path / "cache").glob("*.json"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_describe_says_what_it_kept(server, tmp_path, key, signum):
    """A real `anim-clip describe` stopped while waiting for its third class: the two finished
    classes are kept, said in one line, and the exit code is 128 + the signal."""
    server.stall_from = 3  # one request per class (k=2, 4 per reply): the third class never comes
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "anim_clip", "describe", "lote", "--out", str(out), "--kind",
                             "actions", "-k", "2", "--base-url", server.base_url, "--model", "m",
                             "--api-key-env", "ANIM_CLIP_TEST_KEY"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while len(server.requests) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) == 3, proc.communicate()[0]
        proc.send_signal(signum)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == (f"interrupted ({signal.Signals(signum).name}): kept {out / 'actions.csv'}; "
                                               "run the same command again to go on")
    rows = read_csv(out / "actions.csv")
    assert rows[0] == ["id", "name", "description"] and [r[0] for r in rows[1:]] == ["0", "0", "1", "1"]
