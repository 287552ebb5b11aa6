"""From a reply to a training document: sections, fenced code, and the verdict of each check.

Verdicts decided per reply (as it arrives): ``kept`` or the first failed check among ``empty``,
``truncated``, ``unparsed`` (no sections / no code block), ``seed_copy``, ``syntax_error``. The
corpus-level checks (``exact_duplicate``, ``near_duplicate``, ``contaminated``) run once every reply is
in (filters.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from arctic_pretrain.synthesize.syntax import syntax_ok

PROBLEM = re.compile(r"^[ \t#*]*\[\s*problem\s+description\s*\][ \t*:]*$", re.I | re.M)
SOLUTION = re.compile(r"^[ \t#*]*\[\s*solution\s*\][ \t*:]*$", re.I | re.M)
FENCED = re.compile(r"^[ \t]*```[ \t]*([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*[^\n`]*\n(.*)\Z", re.S | re.M)


def normalize(text: str) -> str:
    """Whitespace removed (the seed-copy test is whitespace-insensitive)."""
    return "".join(text.split())


def fenced_blocks(text: str) -> list[str]:
    return [m.group(2).rstrip("\n") for m in FENCED.finditer(text)]


def extract_code(text: str) -> str | None:
    """The longest fenced code block; else the code after an opening fence the reply never closed
    (a model that ends its file with EOS); else None."""
    blocks = [b for b in fenced_blocks(text) if b.strip()]
    if blocks:
        return max(blocks, key=len)
    m = OPEN_FENCE.search(text)
    return m.group(1).rstrip() if m and m.group(1).strip() else None


@dataclass
class Parsed:
    document: str | None  # the training text
    code: str | None  # what the syntax and seed-copy checks look at
    problem: str | None = None


def parse_reply(reply: str, fmt: str) -> Parsed:
    """``sections``: [Problem Description] ... [Solution] ... -> a document of both; ``code``: one file."""
    if fmt == "code":
        code = extract_code(reply)
        return Parsed(code, code)
    p, s = PROBLEM.search(reply), SOLUTION.search(reply)
    if not p or not s or s.start() < p.end():
        return Parsed(None, None)
    problem = reply[p.end():s.start()].strip()
    solution = reply[s.end():].strip()
    if not problem or not solution:
        return Parsed(None, None)
    code = extract_code(solution) or solution
    return Parsed(f"[Problem Description]\n{problem}\n\n[Solution]\n{solution}\n", code, problem)


@dataclass
class Verdict:
    verdict: str  # kept or the reason it was rejected
    document: str | None
    syntax: bool | None  # None: no parser for the language (or not checked)


def judge(reply: str, finish_reason: str | None, fmt: str, language: str, seed_file: str, *,
          reject_truncated: bool = True, syntax: str = "reject", seed_copy: bool = True,
          min_chars: int = 20) -> Verdict:
    """Parse a reply and run the per-reply checks, in order; the first failure names the verdict."""
    if not reply.strip():
        return Verdict("empty", None, None)
    if reject_truncated and finish_reason == "length":
        return Verdict("truncated", None, None)
    parsed = parse_reply(reply, fmt)
    if parsed.document is None:
        return Verdict("unparsed", None, None)
    if len(parsed.code.strip()) < min_chars:
        return Verdict("empty", parsed.document, None)
    if seed_copy and normalize(parsed.code) in normalize(seed_file):
        return Verdict("seed_copy", parsed.document, None)
    ok = syntax_ok(parsed.code, language) if syntax != "off" else None
    if ok is False and syntax == "reject":
        return Verdict("syntax_error", parsed.document, ok)
    return Verdict("kept", parsed.document, ok)
