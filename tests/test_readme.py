"""Every Python snippet of the README runs verbatim on the README's install (no wandb).

A snippet is shrunk only through keyword arguments that it documents itself in a comment
(``max_n_iters=25``: "fewer iterations: a quicker, rougher run"; ``seeds``: "fewer is quicker"),
so the test runs what a reader copies, with a smaller budget.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

#: documented keyword -> (what the README writes, what the test runs)
SHRINK = {
    "max_n_iters": ("max_n_iters=25", "max_n_iters=1"),
    "seeds": ("seeds={0, 1, 2}", "seeds={0}"),
}


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def shrink(snippet: str) -> str:
    """Apply :data:`SHRINK` where the snippet documents the keyword in a comment."""
    comments = "\n".join(line.split("#", 1)[1] for line in snippet.splitlines() if "#" in line)
    for keyword, (old, new) in SHRINK.items():
        if old in snippet:
            assert keyword in comments, f"the snippet uses {old} without documenting {keyword}"
            snippet = snippet.replace(old, new)
    return snippet


def test_the_readme_has_the_api_and_benchmark_snippets():
    snippets = python_snippets()
    assert any("Experiment(" in s for s in snippets)
    assert any("Benchmark(" in s for s in snippets)
    for snippet in snippets:  # BenchMARL's base experiment needs wandb
        assert "ExperimentConfig.get_from_yaml()" not in snippet


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, capsys):
    snippet = python_snippets()[index]
    monkeypatch.chdir(tmp_path)
    exec(compile(shrink(snippet), f"README.md python snippet {index}", "exec"), {"__name__": "__main__"})
    if "matrix_report" in snippet:  # the API example reports like run.py does
        assert "greedy joint action: (" in capsys.readouterr().out
        assert list(tmp_path.rglob("matrix_game_final.json"))
        assert list(tmp_path.rglob("matrix_game_heatmaps.png"))
        assert list(tmp_path.rglob("matrix_game_tables.csv"))
    if "Benchmark(" in snippet:
        assert len(list(tmp_path.rglob("*__*/scalars"))) == 3  # 3 algorithms x 1 seed
