"""The README's "Your own network" snippet runs as written (in a scratch folder): the road it shows is real."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the snippet's last line needs the deploy extra: pip install -e '.[deploy]'")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own network"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(os.listdir(tmp_path)) == ["mobilenet_v2_4bit.onnx", "mobilenet_v2_4bit.pth.tar",
                                            "mobilenet_v2_4bit.safetensors"]
