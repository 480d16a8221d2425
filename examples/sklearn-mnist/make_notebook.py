"""Build tutorial.ipynb from tutorial.py's `# %%` cells, so the script and the notebook never drift apart.

    python examples/sklearn-mnist/make_notebook.py        # rewrite tutorial.ipynb
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTRO = ("# Train an image classification model (part 1)\n\nThe Azure ML tutorial on a self-hosted training cluster: "
         "only the imports changed. Run `cluster up` in the repository root, then start Jupyter there.\n")
# the script's command-line handling, adapted to a notebook
REPLACEMENTS = {
    "args, _unknown = parser.parse_known_args()": "args, _unknown = parser.parse_known_args([])",
    "HERE = Path(__file__).resolve().parent": 'HERE = Path("examples/sklearn-mnist").resolve()',
    "parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])": "parser = argparse.ArgumentParser()",
    'matplotlib.use("Agg")\n': "",
}


def build() -> dict:
    body = (HERE / "tutorial.py").read_text().split('"""', 2)[2]
    cells: list[dict] = [{"cell_type": "markdown", "metadata": {}, "source": INTRO.splitlines(keepends=True)}]
    for chunk in re.split(r"^# %% ", body, flags=re.M)[1:]:
        title, _, code = chunk.partition("\n")
        code = code.strip("\n")
        for old, new in REPLACEMENTS.items():
            code = code.replace(old, new)
        cells.append({"cell_type": "markdown", "metadata": {}, "source": [f"## {title}\n"]})
        cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                      "source": code.splitlines(keepends=True)})
    for i, cell in enumerate(cells):  # nbformat 4.5: every cell has a stable id
        cell["id"] = f"cell-{i}"
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"}, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    (HERE / "tutorial.ipynb").write_text(render())
    print(HERE / "tutorial.ipynb")
