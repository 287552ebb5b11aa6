"""PII redaction in the bigcode-dataset manner: detect-secrets' plugins for keys and tokens (as bigcode's
PII pipeline used), regexes for emails, IP addresses and assigned passwords/secrets.

What is caught: every regex plugin of detect-secrets (AWS, Azure storage AccountKey, JWT, credentials in
URLs such as ``postgres://user:pass@host``, GitHub, GitLab, Slack, Stripe, Twilio, SendGrid, npm, PyPI,
OpenAI, Mailchimp, Discord, Telegram, Square, Artifactory, IBM, Cloudant, Softlayer), PEM private key
blocks, Google API keys, Hugging Face tokens, GitHub fine-grained tokens, ``api_key = "..."``-style values
random enough (entropy), ``password = "..."`` values, emails, public IPv4/IPv6 addresses.
Keys become ``<KEY>``, passwords (assigned, or in a URL) ``<PASSWORD>``, emails ``<EMAIL>``; a public IP
address is replaced by a synthetic one (as StarCoder2 did, so code that parses addresses still reads like
code), while private, loopback and documentation addresses are left alone (they identify nobody).
Each plugin runs only where a literal its pattern needs occurs (a substring test), and the slow
keyword-assignment plugins only on the lines holding their keywords: the same matches, far less regex time.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import math
import pkgutil
import re
import zlib
from collections import Counter

from datatrove.data import Document

from arctic_pretrain.curate.config import PIIConfig
from arctic_pretrain.text.steps import DocStep

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
# detect-secrets plugins: (class name, literals one of which its patterns need (None: always run), kind)
DETECTORS = [
    ("AWSKeyDetector", ("A3T", "ABIA", "ACCA", "AKIA", "ASIA", "aws"), "key"),
    ("ArtifactoryDetector", ("AKC", "AP"), "key"),
    ("AzureStorageKeyDetector", ("AccountKey=",), "key"),
    ("BasicAuthDetector", ("://",), "password"),
    ("DiscordBotTokenDetector", None, "key"),
    ("GitHubTokenDetector", ("gh",), "key"),
    ("GitLabTokenDetector", ("gl", "GR1348941"), "key"),
    ("JwtTokenDetector", ("eyJ",), "key"),
    ("MailchimpDetector", ("-us",), "key"),
    ("NpmDetector", ("_authToken",), "key"),
    ("OpenAIDetector", ("T3BlbkFJ",), "key"),
    ("PypiTokenDetector", ("pypi-",), "key"),
    ("SendGridDetector", ("SG.",), "key"),
    ("SlackDetector", ("xox", "hooks.slack.com"), "key"),
    ("SquareOAuthDetector", ("sq0csp-",), "key"),
    ("StripeDetector", ("k_live_",), "key"),
    ("TelegramBotTokenDetector", (":",), "key"),
    ("TwilioKeyDetector", ("AC", "SK"), "key"),
]
# keyword-assignment plugins (`cloudant_password = "..."`): 3-10 MB/s each on whole files, so they read only
# the lines holding one of their (lower-case) keywords
KEYWORD_DETECTORS = ["CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector"]
_KEYWORDS = ("key", "pw", "pass", "token", "softlayer.com", "cloudant.com")
# not in detect-secrets: the whole PEM block (its PrivateKeyDetector matches the header only), Google API
# keys, Hugging Face tokens, GitHub fine-grained tokens, OpenAI project keys
KEY_PATTERNS = [
    (("-----BEGIN",),
     re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----[\s\S]+?-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    (("hf_",), re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    (("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b")),
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b")),  # OpenAI project keys (no T3BlbkFJ marker)
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


@functools.cache
def _plugins() -> tuple[list, list]:
    """detect-secrets plugin instances: (gated plugins with their kind, keyword plugins)."""
    import detect_secrets.plugins as plugins_pkg
    from detect_secrets.plugins.base import RegexBasedDetector

    classes = {}
    for mod in pkgutil.iter_modules(plugins_pkg.__path__):
        module = importlib.import_module(f"detect_secrets.plugins.{mod.name}")
        classes.update({n: c for n, c in vars(module).items()
                        if isinstance(c, type) and issubclass(c, RegexBasedDetector)})
    return ([(classes[name](), literals, kind) for name, literals, kind in DETECTORS],
            [classes[name]() for name in KEYWORD_DETECTORS])


_TRIM = " \t\r\n\"'"  # delimiters some patterns include around the secret (and "=:" before it)
# detect-secrets' JWT pattern ends in a lazy `[...]*?`, so its match stops at the dot before the signature (the
# 43 characters of an HS256 one): the span is extended over it, so the whole header.payload.signature goes
JWT_SIGNATURE = re.compile(r"[A-Za-z0-9_\-+/=]*")


def _secret_span(plugin, m: re.Match, offset: int) -> tuple[int, int] | None:
    """The secret's span in a plugin's regex match: its value group, else the match less the delimiters
    and a ``Name=`` prefix (Artifactory and Azure patterns include them); None where the plugin's own
    checks (e.g. JwtTokenDetector's decoding) reject the match."""
    if not any(plugin.analyze_string(m.group(0))):
        return None
    # a group is the secret (BasicAuth's password) unless it is a leading prefix alternation (GitHub's ghp|gho)
    groups = [m.span(g) for g in range(1, m.re.groups + 1) if m.group(g)]
    start, end = m.span()
    if groups and groups[-1][0] > m.start() and groups[-1][1] - groups[-1][0] >= 4:
        start, end = groups[-1]
    found = m.string[start:end]
    name, sep, rest = found.partition("=")
    if sep and name.isalpha() and rest:
        start += len(name) + 1
    while start < end and m.string[start] in _TRIM + "=:":
        start += 1
    while end > start and m.string[end - 1] in _TRIM:
        end -= 1
    return (offset + start, offset + end) if end - start >= 4 else None


def _detect_secrets(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every secret detect-secrets' plugins find; overlapping spans merged."""
    gated, keyword = _plugins()
    spans: list[tuple[int, int, str]] = []
    for plugin, literals, kind in gated:
        if literals is None or any(lit in text for lit in literals):
            for regex in plugin.denylist:
                found = [sp for m in regex.finditer(text) if (sp := _secret_span(plugin, m, 0))]
                if type(plugin).__name__ == "JwtTokenDetector":
                    found = [(a, JWT_SIGNATURE.match(text, b).end() if text[b - 1] == "." else b) for a, b in found]
                spans += [(*sp, kind) for sp in found]
    if any(w in text for w in _KEYWORDS):
        pos = 0
        for line in text.split("\n"):
            if any(w in line for w in _KEYWORDS):
                for plugin in keyword:
                    for regex in plugin.denylist:
                        spans += [(*sp, "key") for m in regex.finditer(line) if (sp := _secret_span(plugin, m, pos))]
            pos += len(line) + 1
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -s[1])):
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end, merged[-1][2])
            continue
        merged.append((start, end, kind))
    return merged


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
    if cfg.keys or cfg.passwords:
        for start, end, kind in reversed(_detect_secrets(text)):
            if cfg.keys if kind == "key" else cfg.passwords:
                counts[kind] += 1
                text = text[:start] + ("<KEY>" if kind == "key" else "<PASSWORD>") + text[end:]
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
