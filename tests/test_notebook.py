"""The Colab notebook runs headless from top to bottom (tiny sizes via environment variables)."""
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a Jupyter kernel running three short runs (~70 s)
def test_colab_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NOTEBOOK_ROUNDS", "2")
    monkeypatch.setenv("NOTEBOOK_WIDTH", "0.25")
    monkeypatch.setenv("NOTEBOOK_PRETRAIN_EPOCHS", "2")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(ROOT / "experiments" / "dimat_colab.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "experiments")}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "dimat_jax 0.1.0" in text and "after the first merge / round" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the two figures are displayed
