"""The README's Python example (bindings/python/readme_example.py) runs."""
import os
import runpy


def test_readme_example_runs(capsys):
    here = os.path.dirname(os.path.abspath(__file__))
    runpy.run_path(os.path.join(here, "..", "readme_example.py"))
    out = capsys.readouterr().out
    assert "refused:" in out and "3 tokens stored" in out
