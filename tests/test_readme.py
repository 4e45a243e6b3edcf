"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert (tmp_path / "out" / "tiny" / "manifest.json").is_file()


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert first == [
        "pip install -c constraints.txt -e . && cgc compile cerebras-gpt-111m",
        "pip install -c constraints.txt -e '.[test]' && pytest",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert first[1] in ci
