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


JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SECRETS = {  # kind -> (planted line, the secret that must go, what must stay)
    "jwt": (f'headers = {{"Authorization": "Bearer {JWT}"}}', JWT, "Bearer <KEY>"),
    "azure": (f'CONN = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={AZURE_KEY};"', AZURE_KEY,
              "AccountKey=<KEY>;"),
    "url_password": ('DB = "postgres://admin:S3cr3tPassw0rd@db.internal.example.com:5432/app"', "S3cr3tPassw0rd",
                     "postgres://admin:<PASSWORD>@db.internal.example.com"),
    "github": ('TOKEN = "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"', "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", "<KEY>"),
    "slack": ('hook = "xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx"', "xoxb-123456789012", "<KEY>"),
    "stripe": ('stripe.api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "<KEY>"),
    "aws": ('aws_access_key_id = "AKIAIOSFODNN7EXAMPLE"', "AKIAIOSFODNN7EXAMPLE", "<KEY>"),
    "private_key": ("KEY = '''-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq98R3nLmBqZ0\n"
                    "-----END RSA PRIVATE KEY-----'''", "MIIEpAIBAAKCAQEA7bq98R3nLmBqZ0", "KEY = '''<KEY>'''"),
}


def test_each_planted_secret_kind_is_redacted_and_counted(normal_python: str) -> None:
    for name, (line, secret, kept) in SECRETS.items():
        text, counts = redact(normal_python + "\n" + line + "\n", PIIConfig())
        assert secret not in text and kept in text, (name, text[-300:])
        expected = {"password": 1} if name == "url_password" else {"key": 1}
        assert dict(counts) == expected, (name, counts)  # the URL password is a password, not an email


def test_a_jwt_is_redacted_whole_with_its_signature() -> None:
    """detect-secrets' JWT match stops before the signature; header, payload and signature all go."""
    signature = JWT.rsplit(".", 1)[1]
    assert len(signature) == 43
    text, counts = redact(f'headers = {{"Authorization": "Bearer {JWT}"}}\nurl = f"/api?token={JWT}&page=2"\n'
                          f"# expired: {JWT}.\n", PIIConfig())
    assert signature not in text and dict(counts) == {"key": 3}
    assert text == ('headers = {"Authorization": "Bearer <KEY>"}\nurl = f"/api?token=<KEY>&page=2"\n'
                    "# expired: <KEY>.\n")


def test_url_credentials_redact_only_the_password_span(normal_python: str) -> None:
    """A common password ('password') in a URL: the URL's copy goes, the word elsewhere stays."""
    text, counts = redact('password_hint = "see the docs"\nURL = "mysql://root:password@10.0.0.5/db"\n',
                          PIIConfig())
    assert 'URL = "mysql://root:<PASSWORD>@10.0.0.5/db"' in text and text.startswith("password_hint")
    assert dict(counts) == {"password": 1}


def test_ordinary_code_is_untouched() -> None:
    from .conftest import STDLIB

    for name in ("json/decoder.py", "base64.py", "hashlib.py", "secrets.py", "urllib/parse.py", "smtplib.py"):
        text = (STDLIB / name).read_text(encoding="utf-8")
        out, counts = redact(text, PIIConfig())
        assert not {k: v for k, v in counts.items() if k in ("key", "password")}, (name, counts)
