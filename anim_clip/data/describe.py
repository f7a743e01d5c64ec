"""K short LLM-written descriptions per action and per species (docs/method.md §2.4, §9 D3).

The release encodes one ~250-word text per class, of which CLIP's 77-token context keeps about 55
words. We instead ask any OpenAI-compatible chat endpoint (vLLM, ollama, …) for K short, visual,
distinct descriptions per class, each fitting the context, and write them as an
``id,name,description`` CSV with K rows per class, class-major in class-id order.

Long runs (897 species × 50) must survive failures: every response is cached on disk by a hash of
its request, the CSV grows one finished class at a time, and a re-run skips finished classes.
The API key is read from the environment and never written anywhere, error messages included;
it goes only to ``--base-url`` itself: redirects are not followed, and a URL carrying credentials
is refused.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from functools import partial
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Literal


from anim_clip.data.descriptions import CONTEXT_LENGTH, split_sentences, token_count
from anim_clip.errors import AnimClipError, DatasetFormatError
from anim_clip.io import append_durably, atomic_write_text
from anim_clip.ui import progress_bar

log = logging.getLogger(__name__)

HEADER = ["id", "name", "description"]
PER_REQUEST = 25  # descriptions asked for in one request: long lists drift and get cut off
FALLBACK_WORDS = 50  # without open_clip's tokenizer: a word cap that stays under 75 BPE tokens
_RETRY_STATUS = {429} | set(range(500, 600))

Message = dict[str, str]


class ChatClient:
    """Minimal client for ``POST {base_url}/chat/completions`` with retries and a response cache.

    Each try must be over, reply read, within ``timeout`` seconds in all (:class:`_Deadline`);
    ``max_retries`` retries follow the first try; ``sleep`` and ``seed`` make the backoff testable.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 5,
        cache_dir: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ):
        self.base_url = _checked_base_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sleep = sleep
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._rng = random.Random(seed)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def complete(self, messages: list[Message], temperature: float = 0.8, index: int = 0) -> str:
        """The reply's text. ``index`` numbers repeated identical requests so each is cached apart."""
        key = {"url": self.url, "model": self.model, "messages": messages,
               "temperature": temperature, "index": index}
        cached = self._cache_path(key)
        if cached is not None and cached.exists():
            try:
                content = json.loads(cached.read_text(encoding="utf-8"))["content"]
                if isinstance(content, str):
                    return content
            except (ValueError, KeyError, TypeError):
                pass
            log.warning("ignoring unreadable cache file %s", cached)
        content = self._post({"model": self.model, "messages": messages, "temperature": temperature})
        if cached is not None:
            atomic_write_text(cached, json.dumps({"request": key, "content": content}, ensure_ascii=False) + "\n")
        return content

    def _cache_path(self, key: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        return self.cache_dir / f"{digest}.json"

    def _post(self, body: dict) -> str:
        """Send with exponential backoff on transient failures (connection, timeout, 429, 5xx)."""
        tries = self.max_retries + 1
        last = ""
        for attempt in range(tries):
            with _Deadline(self.timeout) as deadline:  # the error body below is read under it too
                try:
                    return _reply_text(self._send(body, deadline))
                except urllib.error.HTTPError as e:
                    if 300 <= e.code < 400:
                        raise AnimClipError(self._redact(
                            f"{self.url} redirects (HTTP {e.code}) to {e.headers.get('Location')}; redirects are "
                            "not followed, so the API key goes nowhere else: give the final address as --base-url")
                        ) from None
                    detail = _error_body(e)
                    last = f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")
                    if e.code not in _RETRY_STATUS:
                        raise AnimClipError(self._redact(f"chat request to {self.url} was rejected: {last}"
                                                         + self._auth_hint(e.code))) from None
                    wait = _retry_after(e)
                except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as e:
                    reason = e.reason if isinstance(e, urllib.error.URLError) else e
                    last = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
                    wait = None
                except ValueError as e:  # a 200 whose body is not a chat completion: not worth retrying
                    raise AnimClipError(self._redact(f"unexpected reply from {self.url}: {e}")) from None
            if attempt + 1 < tries:
                delay = self._delay(attempt, wait)
                log.warning("chat request to %s failed (%s); retry %d/%d in %.1f s",
                            self.url, self._redact(last), attempt + 1, self.max_retries, delay)
                self.sleep(delay)
        raise AnimClipError(self._redact(f"chat request to {self.url} failed after {tries} tries; last: {last}"))

    def _send(self, body: dict, deadline: _Deadline) -> bytes:
        """The reply's bytes; ``TimeoutError`` if ``deadline`` cut the request short."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        request.deadline = deadline  # type: ignore[attr-defined]  # read by the connection (_Watched)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                reply = response.read()
        except (OSError, HTTPException):
            if not deadline.expired:
                raise
        if deadline.expired:  # a cut read ends like a short reply: say what happened instead
            raise TimeoutError(f"no whole reply within {self.timeout:g} s (--timeout)")
        return reply

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with ±50 % jitter, so parallel clients do not retry in lockstep."""
        delay = min(self.max_backoff, self.backoff * 2**attempt) * self._rng.uniform(0.5, 1.5)
        return min(self.max_backoff, max(delay, retry_after or 0.0))

    def _redact(self, text: str) -> str:
        """Servers may echo request headers in error bodies; the key must not reach a message."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "<redacted>") if key else text

    def _auth_hint(self, code: int) -> str:
        if code not in (401, 403):
            return ""
        state = "is set" if os.environ.get(self.api_key_env) else "is not set"
        return f" (the API key comes from ${self.api_key_env}, which {state})"


class _Deadline:
    """The time one try must be over by. A socket timeout bounds each read only, so a server
    trickling a byte at a time would hold a request for ever: when the time is up, the try's
    socket is shut down, which ends the read in progress (a timer thread, cancelled on exit)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        if self.expired:  # the time ran out while connecting
            self._cut()

    def _cut(self) -> None:
        self.expired = True
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass


class _Watched:
    """A connection that hands its socket to its request's :class:`_Deadline` once connected."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(partial(_HTTPConnection, deadline=req.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(partial(_HTTPSConnection, deadline=req.deadline), req)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would repeat the request, Authorization header included, wherever a 3xx points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl) -> None:
        return None  # the 3xx reaches the caller as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects, _HTTPHandler, _HTTPSHandler)


def _checked_base_url(url: str) -> str:
    """``url`` without a trailing slash; credentials in it (``user:pass@``, a query) are refused,
    since they would be sent, cached and printed: the key belongs in ``--api-key-env``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnimClipError(f"base URL must start with http:// or https:// and name a host, got {url!r}")
    if "@" in parts.netloc or parts.query or parts.fragment:
        host = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise AnimClipError(f"--base-url {host}: take the user:password@, ?query or #fragment out of it; an API key "
                            "goes in the environment variable named by --api-key-env, sent only to this server")
    return url.rstrip("/")


def _reply_text(raw: bytes) -> str:
    """The text of a chat completion; a ``ValueError`` saying what is wrong with anything else."""
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ValueError(f"not JSON: {raw[:80]!r}") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"no choices[0].message.content ({type(e).__name__}: {e})") from None
    if content is not None and not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {type(content).__name__} {content!r:.80}, not text")
    return content or ""


def _error_body(error: urllib.error.HTTPError) -> str:
    """The start of an error reply: servers put the useful reason there ("model not found")."""
    try:
        return error.read().decode("utf-8", "replace")[:300].strip()
    except (OSError, HTTPException):
        return ""


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return float(error.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


# --- prompts and parsing ---------------------------------------------------------------------

SYSTEM = ("You are a biologist writing captions for an animal video dataset. You write short, concrete, "
          "visual descriptions: what a camera would see, not facts that cannot be seen.")


def action_prompt(name: str, n: int, examples: list[str] | None = None) -> str:
    """Ask for ``n`` descriptions of an animal performing ``name``, optionally naming example species."""
    seen = f" Animals seen doing it include: {', '.join(examples[:8])}." if examples else ""
    return (f'As a biologist, describe what an animal performing the action "{name}" looks like in a video: '
            f"body posture, movement of legs, wings, fins, head and tail, speed and rhythm, and how it relates to "
            f"its surroundings or other animals.{seen} Write {n} different descriptions, each one sentence of at "
            f"most 40 words, each on a different visual cue, valid for any species. "
            f"Answer with a numbered list, one description per line, and nothing else.")


def species_prompt(name: str, n: int) -> str:
    """Ask for ``n`` descriptions of what ``name`` looks like."""
    return (f'Describe the visual appearance of the animal "{name}": body shape, size, colour and markings, '
            f"texture of skin, fur, feathers or scales, and typical posture. Write {n} different descriptions, "
            f"each one sentence of at most 40 words, each on a different visual feature. "
            f"Answer with a numbered list, one description per line, and nothing else.")


_THINK = re.compile(r"<think>.*?(</think>|$)", flags=re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"^\s*(?:(?:\(?\d{1,3}\s*[.):\]]|\d{1,3}\s+-|[-*•·–—+]|#{1,6})\s+)+")
_QUOTES = "\"'“”‘’«»`"


def parse_descriptions(text: str) -> list[str]:
    """One description per list item: numbering, bullets, quotes, markdown and chatter removed.

    If any line is a list item, unnumbered lines ("Here are five descriptions:") are dropped.
    """
    lines = [line for line in _THINK.sub("", text).splitlines() if line.strip()]
    if any(_MARKER.match(line) for line in lines):
        lines = [line for line in lines if _MARKER.match(line)]
    out = []
    for line in lines:
        line = _MARKER.sub("", line).replace("**", "").replace("__", "").strip().strip(_QUOTES).strip()
        if len(line.split()) >= 3 and not line.endswith(":"):
            out.append(" ".join(line.split()))
    return out


def fit_context(text: str) -> str:
    """``text`` cut to whole sentences (else words) that fit CLIP's 77-token context."""
    try:
        if token_count(text) <= CONTEXT_LENGTH:
            return text
        return split_sentences(text)[0]
    except ImportError:
        return " ".join(text.split()[:FALLBACK_WORDS])


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# --- the CSV ---------------------------------------------------------------------------------


def read_finished(out_csv: Path, names: list[str], k: int) -> dict[int, list[str]]:
    """Classes of ``out_csv`` that already hold ``k`` rows; partial classes are left to redo."""
    if not out_csv.exists():
        return {}
    text = out_csv.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a torn last line from a crash mid-append
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}
    if [c.strip().lower() for c in rows[0]] != HEADER:
        raise DatasetFormatError(out_csv, f"expected the header {','.join(HEADER)}; refusing to overwrite", 1)
    found: dict[int, list[str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[0].isdigit() or int(row[0]) >= len(names):
            raise DatasetFormatError(out_csv, f"expected 'id,name,description' with id in 0..{len(names) - 1}", number)
        if row[1] != names[int(row[0])]:
            raise DatasetFormatError(out_csv, f"class {row[0]} is {names[int(row[0])]!r} here, not {row[1]!r}", number)
        found.setdefault(int(row[0]), []).append(row[2])
    over = [i for i, texts in found.items() if len(texts) > k]
    if over:
        raise DatasetFormatError(out_csv, f"class {over[0]} has {len(found[over[0]])} descriptions, more than "
                                          f"k={k}; write to another file")
    return {i: texts for i, texts in found.items() if len(texts) == k}


def _csv_text(rows: list[tuple[int, str, str]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(HEADER)
    writer.writerows(rows)
    return buffer.getvalue()


def _class_rows(done: dict[int, list[str]], names: list[str], ids: list[int]) -> list[tuple[int, str, str]]:
    return [(i, names[i], text) for i in ids for text in done[i]]


# --- generation ------------------------------------------------------------------------------


def describe_class(
    name: str,
    kind: Literal["action", "species"],
    k: int,
    client: ChatClient,
    examples: list[str] | None = None,
    temperature: float = 0.8,
    max_requests: int | None = None,
) -> list[str]:
    """``k`` distinct descriptions of one class, asking again until enough are collected."""
    max_requests = max_requests or 2 * math.ceil(k / PER_REQUEST) + 3
    texts: dict[str, str] = {}
    for index in range(max_requests):
        n = min(PER_REQUEST, k - len(texts))
        prompt = action_prompt(name, n, examples) if kind == "action" else species_prompt(name, n)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        for text in parse_descriptions(client.complete(messages, temperature, index)):
            text = fit_context(text)
            texts.setdefault(_norm(text), text)
            if len(texts) == k:
                return list(texts.values())
    raise AnimClipError(f"only {len(texts)} of {k} distinct descriptions of {kind} {name!r} after {max_requests} "
                        f"requests; try a higher temperature or a larger model")


def describe_classes(
    names: list[str],
    kind: Literal["action", "species"],
    k: int,
    out_csv: str | Path,
    client: ChatClient,
    progress: bool = True,
    examples: list[list[str]] | None = None,
    temperature: float = 0.8,
    max_requests: int | None = None,
) -> Path:
    """Write ``k`` descriptions per class to ``out_csv`` (``id,name,description``), resuming.

    Classes already holding ``k`` rows are kept; the rest are generated in id order, each written
    as soon as it is done, so an interruption loses at most the class in flight. ``examples``
    (actions only) lists, per class, species seen performing it, to ground the prompt.
    """
    if kind not in ("action", "species"):
        raise AnimClipError(f"kind must be 'action' or 'species', not {kind!r}")
    if k < 1:
        raise AnimClipError(f"k must be at least 1, got {k}")
    if examples is not None and (kind != "action" or len(examples) != len(names)):
        raise AnimClipError(f"examples must list species for each of the {len(names)} actions")
    out_csv = Path(out_csv)
    done = read_finished(out_csv, names, k)
    atomic_write_text(out_csv, _csv_text(_class_rows(done, names, sorted(done)), header=True))
    todo = [i for i in range(len(names)) if i not in done]
    with progress_bar("classes", per="min", disable=not progress) as bar:
        task = bar.add_task(f"describing {kind}", total=len(todo))  # this run's work: the rate counts it
        for i in todo:
            done[i] = describe_class(names[i], kind, k, client, examples[i] if examples else None,
                                     temperature, max_requests)
            if all(j < i for j in done if j != i):
                append_durably(out_csv, _csv_text(_class_rows(done, names, [i]), header=False))
            else:  # a gap before finished classes: keep class-major order
                atomic_write_text(out_csv, _csv_text(_class_rows(done, names, sorted(done)), header=True))
            bar.advance(task)
    return out_csv
