"""A scripted OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` like vLLM/SGLang/Ollama, answers as a deterministic
"judge" (the image with the lower mean squared error to the original wins, or always the first
image with ``answer_type="first"``) and injects faults from a script, so a client can be tested
against 429 (with Retry-After), 5xx, slow replies, malformed JSON, refusals and wrong formats
through its real HTTP stack, and against hostile servers: ``trickle`` (a valid reply sent one
byte every ``trickle_interval_s``, so no single read times out), ``endless`` (a body that never
ends), ``huge_answer`` (a valid reply whose answer holds ``huge_chars`` characters) and
``error_echo_key`` (a 400 whose message quotes the request's Authorization header after
``echo_pad`` characters). Faults are keyed by the pair's image content (see :func:`pair_key`),
so concurrent clients get the same script whatever the arrival order.

A prompt that asks to reason first ("Reason step by step") gets a scripted reasoning reply whose
``logprobs.content`` holds decoy letters before and after the final "Answer:" line (P(A) =
``decoy_prob_a`` there) and, at the answer token, the one-line P(A) sharpened by
``reasoning_sharpness`` (reasoning made the toy judge surer); a score reply with logprobs carries
a distribution over the -5..5 score tokens (the minus sign a token of its own). With two images
(no original) the toy judge prefers the image with the larger pixel standard deviation (more
contrast).

Run: ``python -m compressai_vlic.testing.loopback_server --script script.json [--port 0]``; the
first stdout line is ``LISTENING <base_url>``. ``GET /stats`` returns request counts and a log
(image formats and sizes, ``detail`` values; never headers), ``POST /script`` replaces the
script and resets the counters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from compressai_vlic.judges.encoding import array_digest, data_url_format, decode_data_url

BEHAVIOURS = (
    "ok",
    "no_logprobs",
    "429",
    "500",
    "503",
    "400",
    "slow",
    "malformed",
    "no_choices",
    "refuse",
    "refusal_field",
    "wrong_format",
    "out_of_range",
    "ambiguous",
    "empty",
    "echo_key",  # a correct answer that also quotes the request's Authorization header
    "trickle",
    "endless",
    "huge_answer",
    "error_echo_key",
)


@dataclass
class ServerScript:
    """What the server does. ``pairs`` maps :func:`pair_key` to behaviours for attempt 1, 2, ...;
    once a list is used up the pair gets ``"ok"``. Pairs not listed follow ``default``."""

    latency_s: float = 0.0
    slow_s: float = 5.0
    retry_after_s: float = 0.1
    trickle_interval_s: float = 0.5
    huge_chars: int = 2_000_000
    echo_pad: int = 190
    logprobs: bool = True
    answer_type: str = "closest"  # "closest" (lower MSE wins) | "first" (always A)
    inspect_images: bool = True  # False: no PNG decoding (benchmarks), answers as "first"
    reasoning_sharpness: float = 3.0  # P(A) at a reasoning reply's answer: p^k / (p^k + (1-p)^k)
    decoy_prob_a: float = 0.2  # P(A) at the letters of the reasoning text around the answer
    default: list[str] = field(default_factory=lambda: ["ok"])
    pairs: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for seq in [self.default, *self.pairs.values()]:
            for b in seq:
                if b not in BEHAVIOURS:
                    raise ValueError(f"unknown behaviour {b!r}; choose from {BEHAVIOURS}")


def pair_key(digests: tuple[str, str, str] | list[str]) -> str:
    """Key of one request: the three image digests in display order (see ``image_digest``)."""
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


class _State:
    def __init__(self, script: ServerScript, expect_key: str | None) -> None:
        self.lock = threading.Lock()
        self.expect_key = expect_key
        self.set_script(script)

    def set_script(self, script: ServerScript) -> None:
        with self.lock:
            self.script = script
            self.requests = 0
            self.by_key: dict[str, int] = {}
            self.log: list[dict[str, Any]] = []
            self.in_flight = 0
            self.max_in_flight = 0

    def next_behaviour(self, key: str) -> tuple[str, int]:
        with self.lock:
            self.requests += 1
            attempt = self.by_key.get(key, 0)
            self.by_key[key] = attempt + 1
            seq = self.script.pairs.get(key, self.script.default)
            if key in self.script.pairs:
                behaviour = seq[attempt] if attempt < len(seq) else "ok"
            else:
                behaviour = seq[attempt % len(seq)]
            return behaviour, attempt + 1


def _judge_images(images: list[np.ndarray], answer_type: str) -> tuple[float, float]:
    """(P(A), score in [-5, 5]) of the toy judge."""
    ref, a, b = (im.astype(np.float64) for im in images)
    if answer_type == "first" or a.shape != ref.shape or b.shape != ref.shape:
        return 0.9, 3.0
    mse_a = float(np.mean((a - ref) ** 2))
    mse_b = float(np.mean((b - ref) ** 2))
    total = mse_a + mse_b
    p_a = 0.5 if total == 0 else mse_b / total
    score = round(10.0 * (p_a - 0.5))
    if score == 0 and mse_a != mse_b:
        score = 1 if mse_a < mse_b else -1
    return p_a, float(max(-5, min(5, score)))


def _judge_two(images: list[np.ndarray]) -> tuple[float, float]:
    """(P(A), score) of the toy reference-free judge: the larger pixel std (contrast) wins."""
    sa, sb = (float(im.astype(np.float64).std()) for im in images)
    p_a = 0.5 if sa + sb == 0 else sa / (sa + sb)
    score = round(10.0 * (p_a - 0.5))
    if score == 0 and sa != sb:
        score = 1 if sa > sb else -1
    return p_a, float(max(-5, min(5, score)))


def _lp(p: float) -> float:
    return math.log(min(max(p, 1e-9), 1.0))


def _tok(token: str, p: float, top: dict[str, float] | None = None) -> dict:
    alts = [{"token": t, "logprob": _lp(q), "bytes": None} for t, q in (top or {}).items()]
    return {"token": token, "logprob": _lp(p), "bytes": None, "top_logprobs": alts}


def _letters(p_a: float) -> dict[str, float]:
    return {" A": p_a, " B": 1.0 - p_a}


def reasoning_reply(p_final: float, decoy: float) -> tuple[str, dict]:
    """A reasoning reply ending in "Answer: A|B", then a trailing note, with its logprobs."""
    letter = "A" if p_final >= 0.5 else "B"
    other = "B" if letter == "A" else "A"
    top = _letters(p_final)
    tokens = [
        _tok("Image", 0.9),
        _tok(" A", decoy, _letters(decoy)),
        _tok(" and", 0.9),
        _tok(" Image", 0.9),
        _tok(" B", 1 - decoy, _letters(decoy)),
        _tok(" differ", 0.9),
        _tok(".\n", 0.9),
        _tok("Answer", 0.99),
        _tok(":", 0.99),
        _tok(f" {letter}", top[f" {letter}"], top),
        _tok("\n(Image", 0.9),
        _tok(f" {other}", decoy, _letters(decoy)),
        _tok(" was", 0.9),
        _tok(" close.)", 0.9),
    ]
    return "".join(t["token"] for t in tokens), {"content": tokens}


def score_reply_logprobs(prefix: str, score: int, top_k: int) -> dict:
    """Logprobs of ``prefix + "Score: <score>"``: P(v) ~ exp(-(v - score)^2 / 2) over -5..5, the
    minus sign a token of its own (as many tokenizers split it)."""
    weights = {v: math.exp(-((v - score) ** 2) / 2.0) for v in range(-5, 6)}
    total = sum(weights.values())
    p = {v: w / total for v, w in weights.items()}
    p_neg = sum(q for v, q in p.items() if v < 0)
    first = {f" {v}": p[v] for v in range(0, 6)}
    first[" -"] = p_neg
    first = dict(sorted(first.items(), key=lambda kv: -kv[1])[:top_k])
    tokens = [_tok(prefix, 0.9), _tok("Score", 0.99), _tok(":", 0.99)]
    if score < 0:
        tokens.append(_tok(" -", p_neg, first))
        mags = {str(-v): p[v] / p_neg for v in range(-5, 0)}
        mags = dict(sorted(mags.items(), key=lambda kv: -kv[1])[:top_k])
        tokens.append(_tok(str(-score), p[score] / p_neg, mags))
    else:
        tokens.append(_tok(f" {score}", p[score], first))
    return {"content": tokens}


def _rate_images(images: list[np.ndarray]) -> int:
    """The toy rater's point-wise answer: 1..9 from the PSNR of the image against the original."""
    ref, img = (im.astype(np.float64) for im in images)
    if ref.shape != img.shape:
        return 5
    mse = float(np.mean((img - ref) ** 2))
    psnr = 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return int(max(1, min(9, round((psnr - 14.0) / 3.0))))


def _completion(content: str | None, refusal: str | None, logprobs: Any, model: str) -> dict:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _answer_logprobs(letter: str, p_a: float) -> dict:
    p_a = min(max(p_a, 1e-6), 1 - 1e-6)
    lp = {"A": math.log(p_a), "B": math.log(1 - p_a)}
    top = [{"token": f" {k}", "logprob": v, "bytes": None} for k, v in lp.items()]
    top.append({"token": " C", "logprob": math.log(1e-6), "bytes": None})
    return {
        "content": [
            {"token": "Answer", "logprob": -0.01, "bytes": None, "top_logprobs": []},
            {"token": ":", "logprob": -0.01, "bytes": None, "top_logprobs": []},
            {"token": f" {letter}", "logprob": lp[letter], "bytes": None, "top_logprobs": top},
        ]
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: a reply must not wait for the client's delayed ACK (40 ms on Linux) before its
    # last segment goes out, or the server adds that to every request the benchmarks time.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            # headers and body in one send (end_headers() would send the headers alone)
            self._headers_buffer.append(b"\r\n" + body)
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to do

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        state = self.server.state
        if self.path.rstrip("/") == "/stats":
            with state.lock:
                self._json(
                    200,
                    {
                        "requests": state.requests,
                        "by_key": dict(state.by_key),
                        "max_in_flight": state.max_in_flight,
                        "log": list(state.log),
                    },
                )
            return
        self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        state = self.server.state
        body = self._body()
        if self.path.rstrip("/") == "/script":
            state.set_script(ServerScript(**json.loads(body)))
            self._json(200, {"ok": True})
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        if state.expect_key is not None:
            if self.headers.get("Authorization", "") != f"Bearer {state.expect_key}":
                self._json(401, {"error": {"message": "invalid api key", "type": "auth"}})
                return
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._chat(json.loads(body), self.headers.get("Authorization", ""))
        finally:
            with state.lock:
                state.in_flight -= 1

    def _chat(self, req: dict[str, Any], authorization: str = "") -> None:
        state = self.server.state
        script = state.script
        texts: list[str] = []
        images: list[np.ndarray] = []
        urls: list[str] = []
        record: dict[str, Any] = {"formats": [], "sizes": [], "details": []}
        for message in req.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    texts.append(part["text"])
                elif part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    record["formats"].append(data_url_format(url))
                    record["details"].append(part["image_url"].get("detail"))
                    if not script.inspect_images:
                        urls.append(url)
                        continue
                    arr = decode_data_url(url)
                    images.append(arr)
                    record["sizes"].append([int(arr.shape[0]), int(arr.shape[1])])
        if script.inspect_images:
            key = pair_key([array_digest(im) for im in images])
        else:  # cheap: no decoding, so the server is not what a benchmark measures
            key = pair_key([hashlib.sha256(u.encode()).hexdigest() for u in urls])
        behaviour, attempt = state.next_behaviour(key)
        record.update(key=key, behaviour=behaviour, attempt=attempt, logprobs=req.get("logprobs"))
        with state.lock:
            state.log.append(record)
        if script.latency_s > 0:
            time.sleep(script.latency_s)
        model = req.get("model", "loopback")
        if behaviour == "error_echo_key":
            msg = f"invalid request {'x' * script.echo_pad} (you sent {authorization})"
            self._json(400, {"error": {"message": msg, "type": "invalid_request"}})
            return
        if behaviour == "endless":
            self._endless()
            return
        if behaviour in ("429", "500", "503", "400"):
            headers = {"Retry-After": f"{script.retry_after_s:g}"} if behaviour == "429" else {}
            msg = {"429": "rate limited", "400": "bad request"}.get(behaviour, "server error")
            self._json(int(behaviour), {"error": {"message": msg, "type": behaviour}}, headers)
            return
        if behaviour == "slow":
            time.sleep(script.slow_s)
        if behaviour == "malformed":
            self._send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"con')
            return
        if behaviour == "no_choices":
            self._json(200, {"id": "x", "object": "chat.completion", "choices": []})
            return
        wants_score = any("Score:" in t for t in texts)
        wants_rating = any("Rating:" in t for t in texts)  # point-wise prompt (one image)
        wants_reason = any("Reason step by step" in t for t in texts)
        if len(images) == 3:
            p_a, score = _judge_images(images, script.answer_type)
        elif len(images) == 2 and not wants_rating:
            p_a, score = _judge_two(images)
        else:
            p_a, score = (0.9, 3.0) if len(urls) == 3 else (0.5, 0.0)
        letter = "A" if p_a >= 0.5 else "B"
        refusal = None
        logprobs = None
        if behaviour == "refuse":
            content = "I'm sorry, but I can't help with comparing these images."
        elif behaviour == "refusal_field":
            content, refusal = None, "I can't assist with that request."
        elif behaviour == "wrong_format":
            content = "Both images look quite similar to me; the first seems a bit sharper."
        elif behaviour == "out_of_range":
            if wants_rating:
                content = "Very good.\nRating: 12"
            else:
                content = "Image A is much better.\nScore: 9" if wants_score else "Answer: C"
        elif behaviour == "ambiguous":
            if wants_rating:
                content = "Rating: 3\nRating: 7"
            else:
                content = "Score: 2\nScore: -3" if wants_score else "Answer: A\nAnswer: B"
        elif behaviour == "empty":
            content = ""
        elif wants_rating:
            rating = _rate_images(images) if len(images) == 2 else 5
            content = f"Original: a photograph.\nImage: a reconstruction of it.\nRating: {rating}"
        elif wants_score:
            content = (
                "Original: a photograph.\nImage A: "
                f"{'closer' if score > 0 else 'further'} to the original.\n"
                f"Image B: {'closer' if score < 0 else 'further'} to the original.\n"
                f"Score: {int(score)}"
            )
            if req.get("logprobs") and script.logprobs and behaviour != "no_logprobs":
                prefix = content[: content.rindex("Score:")]
                top_k = int(req.get("top_logprobs") or 0)
                logprobs = score_reply_logprobs(prefix, int(score), top_k)
        elif wants_reason:
            k = script.reasoning_sharpness
            p_final = p_a**k / (p_a**k + (1 - p_a) ** k) if 0 < p_a < 1 else p_a
            content, reply_logprobs = reasoning_reply(p_final, script.decoy_prob_a)
            if req.get("logprobs") and script.logprobs and behaviour != "no_logprobs":
                logprobs = reply_logprobs
        else:
            content = f"Answer: {letter}"
            if req.get("logprobs") and script.logprobs and behaviour != "no_logprobs":
                logprobs = _answer_logprobs(letter, p_a)
        if behaviour == "echo_key":
            content = f"You sent {authorization!r}.\n{content}"
        if behaviour == "huge_answer":
            content = f"{'blah ' * (script.huge_chars // 5)}\n{content}"
        body = json.dumps(_completion(content, refusal, logprobs, model)).encode()
        if behaviour == "trickle":
            self._trickle(body, script.trickle_interval_s)
            return
        self._send(200, body)

    def _trickle(self, body: bytes, interval_s: float) -> None:
        """A valid reply, one byte at a time: every read is quick, the whole reply is not."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(interval_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def _endless(self) -> None:
        """A 200 whose JSON body never ends (until the client hangs up)."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            self.wfile.write(b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "')
            chunk = b"a" * 65536
            while True:
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client gave up


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    state: _State


def serve(script: ServerScript, port: int = 0, expect_key_env: str | None = None) -> None:
    expect = os.environ.get(expect_key_env) if expect_key_env else None
    server = _Server(("127.0.0.1", port), _Handler)
    server.state = _State(script, expect)
    print(f"LISTENING http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


@dataclass
class ServerHandle:
    """A running server process: its base URL and helpers to read stats or change the script."""

    base_url: str
    process: subprocess.Popen

    def stats(self) -> dict[str, Any]:
        return _http_json("GET", self.base_url.removesuffix("/v1") + "/stats")

    def set_script(self, script: ServerScript) -> None:
        _http_json("POST", self.base_url.removesuffix("/v1") + "/script", asdict(script))


def _http_json(method: str, url: str, payload: Any = None) -> Any:
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@contextmanager
def run_server(
    script: ServerScript | None = None,
    expect_key_env: str | None = None,
    env: dict[str, str] | None = None,
    start_timeout_s: float = 60.0,
) -> Iterator[ServerHandle]:
    """Start the server as a separate process on a free loopback port; stop it on exit."""
    import tempfile

    script = script or ServerScript()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(asdict(script), f)
        script_path = f.name
    cmd = [sys.executable, "-m", "compressai_vlic.testing.loopback_server", "--script", script_path]
    if expect_key_env:
        cmd += ["--expect-key-env", expect_key_env]
    # the child imports the same copy of the package as this process (source tree or install)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )
    try:
        line = _read_line(proc, start_timeout_s)
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        yield ServerHandle(base_url=line.split()[1], process=proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        os.unlink(script_path)


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0].strip() if out else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", help="JSON file with ServerScript fields")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=None)
    parser.add_argument(
        "--expect-key-env", default=None, help="reject requests without this env var's key (401)"
    )
    args = parser.parse_args(argv)
    fields: dict[str, Any] = {}
    if args.script:
        with open(args.script) as f:
            fields = json.load(f)
    if args.latency_s is not None:
        fields["latency_s"] = args.latency_s
    serve(ServerScript(**fields), args.port, args.expect_key_env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
