"""The README's Python API example runs as written."""
import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_api_block_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"configs/', f'"{ROOT}/configs/')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").is_file()
    assert namespace["state"].num_agents == 3
    assert namespace["W"].shape == (10, 10)
