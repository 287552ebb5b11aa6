"""PII redaction: emails, public IPs, keys and passwords replaced; private IPs and ordinary code kept."""

from __future__ import annotations

from datatrove.data import Document

from arctic_pretrain.curate.config import PIIConfig
from arctic_pretrain.curate.pii import FAKE_IPV4, RedactPII, redact

PLANTED = '''
AUTHOR = "Jane Doe <jane.doe@example-corp.com>"
SERVER = "93.184.216.34"
LOCAL = "127.0.0.1"
LAN = "192.168.1.20"
AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
api_key = "q8Zr4LmT2vXe9KpB7sWn3YhD"
db_password = "hunter2hunter2"
token = get_token()
'''


def test_redacts_each_kind() -> None:
    text, counts = redact(PLANTED, PIIConfig())
    assert "jane.doe@example-corp.com" not in text and "<EMAIL>" in text
    assert "93.184.216.34" not in text and any(ip in text for ip in FAKE_IPV4)
    assert "127.0.0.1" in text and "192.168.1.20" in text  # identify nobody: kept
    assert "AKIAIOSFODNN7EXAMPLE" not in text and "q8Zr4LmT2vXe9KpB7sWn3YhD" not in text
    assert text.count("<KEY>") == 2
    assert 'db_password = "<PASSWORD>"' in text
    assert "token = get_token()" in text
    assert dict(counts) == {"email": 1, "ip": 1, "key": 2, "password": 1}


def test_low_entropy_values_are_not_keys() -> None:
    text, counts = redact('api_key = "aaaaaaaaaaaaaaaaaaaa"\n', PIIConfig())
    assert "<KEY>" not in text and not counts


def test_kinds_can_be_switched_off() -> None:
    text, counts = redact(PLANTED, PIIConfig(emails=False, ips=False))
    assert "jane.doe@example-corp.com" in text and "93.184.216.34" in text and "email" not in counts


def test_step_counts_by_kind(normal_python: str) -> None:
    step = RedactPII(PIIConfig())
    out = list(step.run(iter([Document(PLANTED, "a"), Document(normal_python, "b")])))
    assert out[1].text == normal_python
    stats = {k: v.total for k, v in step.stats.stats.items()}
    assert stats["pii_email"] == 1 and stats["pii_key"] == 2 and stats["docs_with_pii"] == 1
