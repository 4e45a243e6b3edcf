"""pyproject.toml lists every package folder (passes/ and backends/ install under cgc.)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = {"cgc": "cgc", "passes": "cgc.passes", "backends": "cgc.backends"}


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for folder, name in PREFIX.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found <= set(config["packages"])
    assert config["package-dir"] == {
        "cgc": "cgc",
        "cgc.passes": "passes",
        "cgc.backends": "backends",
    }
