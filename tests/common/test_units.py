import pytest

from arctic_pretrain.common.units import format_token_count, parse_token_count


@pytest.mark.parametrize("text,expected", [("500B", 500 * 10**9), ("12.5B", 12_500_000_000), ("12.5M", 12_500_000),
                                           ("8192", 8192), (8192, 8192), ("1e9", 10**9), ("4k", 4000),
                                           ("2T", 2 * 10**12)])
def test_parse_human_counts(text, expected):
    assert parse_token_count(text) == expected


@pytest.mark.parametrize("bad", ["five", "1.5", "B", "", "1.2.3M", True])
def test_parse_rejects_with_field_name(bad):
    with pytest.raises(ValueError, match="curriculum.phases.general.tokens"):
        parse_token_count(bad, field="curriculum.phases.general.tokens")


def test_format_round_trip():
    assert format_token_count(500 * 10**9) == "500B"
    assert parse_token_count(format_token_count(12_500_000)) == 12_500_000
