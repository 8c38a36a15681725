"""The paper map of notebook 11 against the code and the notebooks: every object resolves and cites its equation,
every notebook exists and builds what its row says, and the equations the series promises are all there."""
import json
from pathlib import Path

import pytest

from ddpm_lib.paper_map import BEYOND, PAPER, Entry, resolve, table, verify

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PROMISED = {"Eq. 4", "Eq. 7", "Eq. 11", "Eq. 12", "Eq. 14", "Eq. 15", "Algorithm 1", "Algorithm 2"}  # and Eq. 6, in 7


def _text(notebook: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells)


def test_every_promised_equation_has_its_row():
    assert PROMISED <= {entry.cite for entry in PAPER}


@pytest.mark.parametrize("entry", PAPER + BEYOND, ids=lambda e: f"{e.cite}-{e.target}")
def test_every_row_resolves_and_its_notebook_builds_it(entry):
    verify([entry])                                 # the object exists; a paper row's source cites its equation
    text = _text(entry.notebook)                    # the notebook exists
    name = entry.target.rpartition(".")[2].rpartition(":")[2]
    assert (entry.cite in text) if entry in PAPER else (name in text), (entry.notebook, entry.cite, name)


def test_a_row_that_drifted_from_the_code_is_refused():
    with pytest.raises(ValueError, match="no longer cites Eq. 14"):
        verify([Entry("Eq. 14", "L_simple", "schedule:NoiseSchedule.q_sample", "05_training")])
    with pytest.raises(ValueError, match="has no NoSuchThing"):
        resolve("schedule:NoSuchThing")


def test_the_table_has_a_row_per_entry_and_escapes_the_pipes():
    rows = table(PAPER).splitlines()
    assert len(rows) == 2 + len(PAPER)
    assert all(row.count(" | ") == 3 for row in rows[2:])  # four cells: every | inside a cell escaped
    assert "`ddpm_lib.schedule.NoiseSchedule.q_sample`: x_t = sqrt(alpha_bar_t) x0" in rows[2]
