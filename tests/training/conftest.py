"""A small text corpus for training tests."""

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A UTF-8 text file of about 16 KB (repetitive, so a tiny model learns it in a few steps)."""
    lines = [f"def f{i}(x):\n    return x * {i} + {i % 7}  # é\n" for i in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "code.txt"
    path.write_text("".join(lines))
    return path
