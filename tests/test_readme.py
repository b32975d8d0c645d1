"""The README's first screen: its results table is what docs/readme_tables.py computes from the measurement files
(no number typed by hand), and every file it points to exists."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_results_table_is_computed_from_the_files():
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "readme_tables.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_file_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`((?:docs|checkpoints|benchmarks|notebooks)/[\w./-]+\.(?:md|ipynb|png|py))`", readme))
    named |= set(re.findall(r"\]\(((?:docs|notebooks)/[\w./-]+)\)", readme))
    assert named and not [name for name in named if not (ROOT / name).exists()]
