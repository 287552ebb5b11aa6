"""PII redaction in the bigcode-dataset manner: regexes for emails, IP addresses, keys and passwords.

Emails become ``<EMAIL>``, secrets ``<KEY>``, password values ``<PASSWORD>``; a public IP address is
replaced by a synthetic one (as StarCoder2 did, so code that parses addresses still reads like code),
while private, loopback and documentation addresses are left alone (they identify nobody).
"""

from __future__ import annotations

import ipaddress
import math
import re
import zlib
from collections import Counter

from datatrove.data import Document

from arctic_pretrain.curate.config import PIIConfig
from arctic_pretrain.text.steps import DocStep

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
# (literal that must occur, pattern): the literal test is a fast substring search that lets most
# files skip the regex (a pass of each of these regexes is ~10x slower than `in`)
KEY_PATTERNS = [
    (("-----BEGIN",), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----")),
    (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),  # AWS access key id
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),  # GitHub tokens
    (("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b")),
    (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),  # Slack
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),  # Google API key
    (("k_live_",), re.compile(r"\b[sr]k_live_[0-9A-Za-z]{16,}\b")),  # Stripe
    (("hf_",), re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),  # Hugging Face
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b")),  # OpenAI-style
]
_SECRET_WORDS = ("apikey", "api_key", "api-key", "secret", "accesstoken", "access_token", "access-token", "authtoken",
                 "auth_token", "auth-token", "privatekey", "private_key", "private-key")  # ASSIGNED_SECRET's words
_PASSWORD_WORDS = ("password", "passwd", "pwd")
# `api_key = "..."`-style assignments: the value is a secret when it looks random enough
ASSIGNED_SECRET = re.compile(
    r"(?i)(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|private[_-]?key|client[_-]?secret)"
    r"\w*[\"']?\s*[:=]>?\s*[\"']([A-Za-z0-9+/_\-=.]{16,})[\"']")
PASSWORD = re.compile(r"(?i)(?:password|passwd|pwd)\w*[\"']?\s*[:=]>?\s*[\"']([^\"'\s]{4,})[\"']")
# synthetic replacements (documentation ranges, RFC 5737 / 3849): deterministic per address
FAKE_IPV4 = ["192.0.2.1", "192.0.2.17", "198.51.100.4", "198.51.100.23", "203.0.113.9", "203.0.113.42"]
FAKE_IPV6 = ["2001:db8::1", "2001:db8::2f", "2001:db8::a11", "2001:db8::c0de"]


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _public(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


def redact(text: str, cfg: PIIConfig) -> tuple[str, Counter]:
    """Redacted text and the number of replacements by kind (email, ip, key, password)."""
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, kind: str, repl, text: str) -> str:
        def one(m: re.Match) -> str:
            out = repl(m)
            if out != m.group(0):
                counts[kind] += 1
            return out

        return pattern.sub(one, text)

    def value(m: re.Match, placeholder: str, check=lambda v: True) -> str:
        v = m.group(1)
        if not check(v):
            return m.group(0)
        s, e = m.span(1)
        whole = m.group(0)
        return whole[: s - m.start()] + placeholder + whole[e - m.start():]

    lower = text.lower()
    if cfg.keys:
        for literals, pattern in KEY_PATTERNS:
            if any(lit in text for lit in literals):
                text = sub(pattern, "key", lambda m: "<KEY>", text)
        if any(w in lower for w in _SECRET_WORDS):
            text = sub(ASSIGNED_SECRET, "key",
                       lambda m: value(m, "<KEY>", lambda v: entropy(v) >= cfg.min_secret_entropy), text)
    if cfg.passwords and any(w in lower for w in _PASSWORD_WORDS):
        text = sub(PASSWORD, "password", lambda m: value(m, "<PASSWORD>", lambda v: not v.startswith("<")), text)
    if cfg.emails and "@" in text:
        text = sub(EMAIL, "email", lambda m: "<EMAIL>", text)
    if cfg.ips:
        def ip(m: re.Match, fakes: list[str]) -> str:
            addr = m.group(0)
            return fakes[zlib.crc32(addr.encode()) % len(fakes)] if _public(addr) else addr

        text = sub(IPV4, "ip", lambda m: ip(m, FAKE_IPV4), text)
        if text.count(":") >= 7:
            text = sub(IPV6, "ip", lambda m: ip(m, FAKE_IPV6), text)
    return text, counts


class RedactPII(DocStep):
    """Replace PII in place; counts go to datatrove stats ``pii_<kind>``."""

    type = "🔒 - PII"
    name = "pii redaction"

    def __init__(self, cfg: PIIConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def process(self, doc: Document) -> Document | str:
        if not self.cfg.enabled:
            return doc
        text, counts = redact(doc.text, self.cfg)
        for kind, n in counts.items():
            self.stat_update(f"pii_{kind}", value=n)
        if counts:
            self.stat_update("docs_with_pii")
            doc.text = text
        return doc
