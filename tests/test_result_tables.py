"""The result-table scripts on fabricated sweep workdirs, against hand-computed numbers."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(rnd, phase, algorithm, acc, mbytes=0.0, gflops=None, matched=None):
    r = {"round": rnd, "phase": phase, "epoch": 3 + rnd, "algorithm": algorithm, "num_agents": 5,
         "mean_test_accuracy": acc, "mean_test_loss": 1.0, "messages_sent_total": 10 * rnd,
         "bytes_sent_total": mbytes * 1e6}
    if gflops is not None:
        r["merge_gflops"] = gflops
    if matched is not None:
        r["merge_matched"] = matched
    return r


def _sweep(workdir: pathlib.Path, cells: dict) -> None:
    """cells: {name: (cell dict, records)} written as a finished sweep."""
    listing = []
    for name, (cell, recs) in cells.items():
        d = workdir / "cells" / name
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (d / "summary.json").write_text("{}")
        listing.append({"name": name, "cell": cell})
    (workdir / "cells.json").write_text(json.dumps(listing))


def _merge_run(algorithm, accs, gflops, matched=None):
    recs = [_record(0, "trained", algorithm, 0.6)]
    for r, (merged, trained) in enumerate(accs, start=1):
        recs += [_record(r, "merged", algorithm, merged, mbytes=2.0 * r, gflops=gflops[r - 1],
                         matched=None if matched is None else matched[r - 1]),
                 _record(r, "trained", algorithm, trained, mbytes=2.0 * r)]
    return recs


def test_beyond_table_joins_the_main_sweep_as_baselines(tmp_path):
    beyond = _script("beyond_table")
    main_dir, beyond_dir = tmp_path / "main", tmp_path / "beyond"
    base = {"partition": "noniid", "topology": "ring"}
    _sweep(main_dir, {
        "dimat": ({"seed": 0, **base, "algorithm": "dimat", "merge_data": "local"},
                  _merge_run("dimat", [(0.20, 0.19), (0.25, 0.20)], [30.0, 30.0])),
        "global": ({"seed": 0, **base, "algorithm": "dimat", "merge_data": "global"},
                   _merge_run("dimat", [(0.30, 0.19), (0.35, 0.20)], [90.0, 90.0])),
        "cga": ({"seed": 0, **base, "algorithm": "cga", "merge_data": "local"},
                [_record(0, "trained", "cga", 0.6), _record(1, "trained", "cga", 0.4, 5.0),
                 _record(2, "trained", "cga", 0.5, 10.0)]),
        "local": ({"seed": 0, "partition": "noniid", "algorithm": "local"},
                  [_record(0, "trained", "local", 0.6), _record(1, "trained", "local", 0.2),
                   _record(2, "trained", "local", 0.2)])})
    _sweep(beyond_dir, {
        f"adaptive-{seed}": ({"seed": seed, **base, "algorithm": "dimat", "merge_data": "local",
                              "merge.basis": "shared", "merge.rematch": "adaptive", "merge.compression": "none"},
                             _merge_run("dimat", [(0.40 + d, 0.30), (0.50 + d, 0.30)], [30.0, 10.0],
                                        matched=[True, seed == 1]))
        for seed, d in ((0, 0.0), (1, 0.1))})
    rows = {r["variant"]: r for r in beyond.summary(beyond.runs([beyond_dir, main_dir]))}
    assert set(rows) == {"DIMAT", "DIMAT (global merge data)", "CGA", "Local",
                         "DIMAT, shared basis + adaptive re-matching"}
    ada = rows["DIMAT, shared basis + adaptive re-matching"]
    assert ada["seeds"] == 2 and ada["first"] == pytest.approx(0.45) and ada["first_std"] == pytest.approx(0.05)
    assert ada["final"] == pytest.approx(0.55)  # the merge family's round is read right after its merge
    assert ada["merge_gflops"] == pytest.approx(40.0) and ada["merges_matched"] == pytest.approx(1.5)
    assert rows["CGA"]["final"] == pytest.approx(0.5) and rows["CGA"]["megabytes"] == pytest.approx(10.0)
    assert rows["DIMAT"]["merge_gflops"] == pytest.approx(60.0) and rows["Local"]["topology"] == "any"
    assert ada["compute_vs_dimat"] == pytest.approx(40.0 / 60.0) and rows["CGA"]["compute_vs_dimat"] is None
    md = beyond.markdown(list(rows.values()))
    assert md.count("**noniid, ring, 2 rounds**") == 1 and "| Local |" in md  # no graph: under every topology
    assert "| DIMAT, shared basis + adaptive re-matching | 45.0 ± 5.0 | 55.0 ± 5.0 | 4.0 | 40.0 | 0.67 | 1.5 / 2 |" in md
    assert md.index("| DIMAT (global merge data) |") < md.index("| DIMAT |") < md.index("| CGA |")
    once = {"merge.basis": "shared", "merge.rematch": "adaptive"}
    assert beyond.variant({**once, "merge.rematch_threshold": 2.0}) == "DIMAT, shared basis, matching once"
    assert beyond.variant({**once, "merge.rematch_threshold": 0.1}).endswith("re-matching (threshold 0.1)")
    out = tmp_path / "figures"
    out.mkdir()
    assert beyond.figures([beyond_dir, main_dir], out, "test") == 3
    assert {p.name for p in out.glob("*.png")} == {f"accuracy_vs_{k}-partition=noniid-topology=ring.png"
                                                    for k in ("round", "bytes", "merge_compute")}


def test_beyond_table_keeps_runs_of_different_lengths_apart(tmp_path):
    """A longer study (its own per-round DIMAT as the compute reference) is its own section and figure."""
    beyond = _script("beyond_table")
    base = {"partition": "iid", "topology": "ring"}
    dimat = {**base, "algorithm": "dimat", "merge_data": "local"}
    ada = {**dimat, "merge.basis": "shared", "merge.rematch": "adaptive", "merge.rematch_threshold": 0.1}
    _sweep(tmp_path / "w", {
        "short": ({"seed": 0, **dimat}, _merge_run("dimat", [(0.5, 0.6), (0.7, 0.6)], [30.0, 30.0])),
        "long": ({"seed": 0, **dimat, "rounds": 4},
                 _merge_run("dimat", [(0.5, 0.6), (0.7, 0.6), (0.7, 0.7), (0.8, 0.7)], [30.0] * 4)),
        "long-ada": ({"seed": 0, **ada, "rounds": 4},
                     _merge_run("dimat", [(0.4, 0.6), (0.7, 0.6), (0.7, 0.7), (0.79, 0.7)], [33.0, 3.0, 3.0, 3.0],
                                matched=[True, False, False, False]))})
    rows = beyond.summary(beyond.runs([tmp_path / "w"]))
    by = {(r["rounds"], r["variant"]): r for r in rows}
    assert set(by) == {(2, "DIMAT"), (4, "DIMAT"), (4, "DIMAT, shared basis + adaptive re-matching (threshold 0.1)")}
    long_ada = by[(4, "DIMAT, shared basis + adaptive re-matching (threshold 0.1)")]
    assert long_ada["compute_vs_dimat"] == pytest.approx(42.0 / 120.0) and long_ada["merges_matched"] == 1
    assert by[(2, "DIMAT")]["compute_vs_dimat"] == pytest.approx(1.0) and by[(2, "DIMAT")]["final"] == 0.7
    md = beyond.markdown(rows)
    assert "**iid, ring, 2 rounds**" in md and "**iid, ring, 4 rounds**" in md
    out = tmp_path / "figures"
    out.mkdir()
    assert beyond.figures([tmp_path / "w"], out, "test") == 6
    names = {p.name for p in out.glob("accuracy_vs_round-*.png")}
    assert names == {"accuracy_vs_round-partition=iid-topology=ring.png",  # the most common length: unmarked
                     "accuracy_vs_round-partition=iid-topology=ring-rounds=2.png"}


def test_real_table_reports_merged_points_seeds_and_bytes(tmp_path):
    real = _script("real_table")
    cells = {}
    for seed, (m1, m2) in enumerate([(0.40, 0.70), (0.50, 0.60)]):  # DIMAT: merged 0.45 ± 0.05, 0.65 ± 0.05
        for topo in ("fc", "ring"):
            cells[f"dimat-{topo}-{seed}"] = ({"partition": "iid", "topology": topo, "algorithm": "dimat",
                                               "merge_data": "local", "seed": seed},
                                              _merge_run("dimat", [(m1, 0.1), (m2, 0.2)], [1.0, 1.0]))
        cells[f"local-{seed}"] = ({"partition": "iid", "algorithm": "local", "seed": seed},
                                  [_record(0, "trained", "local", 0.6), _record(1, "trained", "local", 0.62),
                                   _record(2, "trained", "local", 0.64)])
    _sweep(tmp_path, cells)
    rows = real.aggregate(tmp_path)
    table = real.build(rows)
    dimat = table["iid"]["cells"]["DIMAT (local merge data)"]
    assert dimat["ring"]["first"] == pytest.approx((0.45, 0.05)) and dimat["ring"]["last"] == pytest.approx((0.65, 0.05))
    assert dimat["ring"]["mb_sent"] == pytest.approx(4.0)  # the last merged record's 2.0 MB x round 2
    assert set(table["iid"]["cells"]["Local"]) == {"fc", "ring"}  # no graph: shown under every topology
    md = real.markdown(table).splitlines()
    header = next(line for line in md if line.startswith("| algorithm"))
    assert header == ("| algorithm | ring: round 1 | ring: round 2 | fc: round 1 | fc: round 2 "
                      "| MB sent (ring) | MB sent (fc) |")
    row = next(line for line in md if line.startswith("| DIMAT"))
    assert row == "| DIMAT (local merge data) | 45.0 ± 5.0 | 65.0 ± 5.0 | 45.0 ± 5.0 | 65.0 ± 5.0 | 4 | 4 |"
    assert "| Local | 62.0 ± 0.0 | 64.0 ± 0.0 |" in "\n".join(md)
