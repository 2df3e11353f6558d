"""Keeping credentials out of every text the judges write: error messages, answers, datasets.

Two places a secret can hide: the API key (read from the environment) and the endpoint URL
(``https://user:password@host/v1?key=...``). :func:`url_secrets` lists the latter,
:func:`scrub` removes every secret from a text, including a fragment of 8 or more characters at
either end of one (a text cut in the middle of a key, or a server that quotes only part of it),
and :func:`public_url` is the form of an endpoint that may be stored: no userinfo, no query, no
fragment. Scrub a text before cutting it to length, never after.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

#: Fragments shorter than this are not treated as secrets (a key's "sk-" prefix is not one).
MIN_FRAGMENT = 8
REDACTED = "***"


def _spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Where ``secret``, or a prefix or suffix of it of MIN_FRAGMENT+ chars, occurs in ``text``.

    Finds the first and last MIN_FRAGMENT characters with ``str.find`` and extends each hit
    character by character, so a long text costs one scan per end.
    """
    if len(secret) <= MIN_FRAGMENT:
        spans, i = [], text.find(secret)
        while i != -1:
            spans.append((i, i + len(secret)))
            i = text.find(secret, i + len(secret))
        return spans
    head, tail = secret[:MIN_FRAGMENT], secret[-MIN_FRAGMENT:]
    spans = []
    i = text.find(head)
    while i != -1:
        n = MIN_FRAGMENT
        while n < len(secret) and i + n < len(text) and text[i + n] == secret[n]:
            n += 1
        spans.append((i, i + n))
        i = text.find(head, i + n)
    j = text.find(tail)
    while j != -1:
        start, m = j, len(secret) - MIN_FRAGMENT
        while m > 0 and start > 0 and text[start - 1] == secret[m - 1]:
            start, m = start - 1, m - 1
        spans.append((start, j + MIN_FRAGMENT))
        j = text.find(tail, j + 1)
    return spans


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and every 8+ character prefix or suffix of one) replaced."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if secret and text:
            spans += _spans(text, secret)
    if not spans:
        return text
    out, pos = [], 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        if start > pos:
            out.append(text[pos:start])
        if start >= pos:
            out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a note of how much was dropped (scrub first)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters not kept]"


def url_secrets(url: str | None) -> list[str]:
    """The credentials inside an endpoint URL: userinfo password/user and query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.password, parts.username]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    return [s for s in found if s and len(s) >= 4]


def public_url(url: str | None) -> str | None:
    """An endpoint as it may be stored or printed: without userinfo, query or fragment."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def public_value(value: object) -> object:
    """A judge option as it may be stored: URLs through :func:`public_url`, the rest as is."""
    if isinstance(value, str) and "://" in value:
        return public_url(value)
    return value
