"""The README's Python examples run as written."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text()


def _block(heading):
    section = TEXT.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1).replace('"configs/', f'"{ROOT}/configs/')


@pytest.mark.slow  # a whole run, as the README shows it
def test_python_api_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(_block("## Python API"), "README.md", "exec"), ns)  # noqa: S102
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").is_file()
    assert ns["state"].num_agents == 3 and ns["W"].shape == (10, 10)


@pytest.mark.slow  # five ResNet-20 agents merged, as the README shows it
def test_merging_example(tmp_path, monkeypatch):
    import jax
    import numpy as np
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(_block("## Merging (the merge engine)"), "README.md", "exec"), ns)  # noqa: S102
    from dimat_jax.merging.spec import flatten
    model, spec, one = ns["model"], ns["spec"], ns["one"]
    _, st = model.apply(one, ns["pre"].eval(ns["x_train"][:512]), mutable=["intermediates"])
    feats = flatten(st["intermediates"])
    all_live = [p for p, path in spec.features.items()
                if (np.asarray(feats[path][0]).reshape(-1, spec.sizes[p]).std(0) > 0).all()]
    assert len(all_live) >= 10
    assert all(ns["recovered"][p] for p in all_live)
    x = ns["pre"].eval(ns["x_train"][:64])
    np.testing.assert_allclose(ns["model"].apply(ns["aligned"], x), ns["model"].apply(ns["one"], x), atol=1e-4)
    assert ns["info"].data_passes == 3
    assert jax.tree.leaves(ns["merged"])[0].shape[0] == 5
    with pytest.raises(AssertionError):  # the merge changed the models
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b), ns["merged"]["params"], ns["stacked"]["params"])
