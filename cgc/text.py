"""Small helpers for the sentences cgc prints."""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in agreement with it: "1 region", "51 regions", "0 stages"."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
