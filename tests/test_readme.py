"""The README's Python example runs as written and does what its comments say."""
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text()


def _block(heading):
    section = TEXT.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1).replace('"configs/', f'"{ROOT}/configs/')


@pytest.mark.slow  # a whole run and a five-agent ResNet-20 merge, as the README shows them
def test_python_api_example(tmp_path, monkeypatch):
    import jax

    from dimat_jax.merging.spec import flatten
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(_block("## Python API"), "README.md", "exec"), ns)  # noqa: S102
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").is_file()
    assert ns["summary"]["num_agents"] == 3
    model, spec, one = ns["model"], ns["spec"], ns["one"]
    _, st = model.apply(one, ns["pre"].eval(ns["ds"].x_train[:512]), mutable=["intermediates"])
    feats = flatten(st["intermediates"])
    all_live = [p for p, path in spec.features.items()
                if (np.asarray(feats[path][0]).reshape(-1, spec.sizes[p]).std(0) > 0).all()]
    assert len(all_live) >= 10
    assert all(ns["recovered"][p] for p in all_live)  # a unit that never fires gives no signal
    x = ns["pre"].eval(ns["ds"].x_train[:64])
    np.testing.assert_allclose(model.apply(ns["aligned"], x), model.apply(one, x), atol=1e-4)
    assert ns["info"].data_passes == 3 and ns["info"].gflops > 0
    assert jax.tree.leaves(ns["merged"])[0].shape[0] == 5
    with pytest.raises(AssertionError):  # the merge changed the models
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b), ns["merged"]["params"], ns["stacked"]["params"])
