"""cgc.text: nouns agree with their counts."""

from cgc.text import count


def test_count_agrees_with_the_number() -> None:
    assert count(1, "region") == "1 region"
    assert count(0, "stage") == "0 stages"
    assert count(51, "region") == "51 regions"
    assert count(12_000, "hop") == "12,000 hops"
    assert count(2, "index", "indices") == "2 indices"
