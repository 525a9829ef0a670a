"""experiments/cv_compare.py: two cross-validation runs merged into one table, paired against the first; the
cross-fitted stack it adds (crossval.within_query_z, crossval.cross_fitted_probs)."""

import json

import numpy as np
import pytest

from experiments import cv_compare
from searchrl.eval.crossval import cross_fitted_probs, within_query_z


def write_run(path, model_score, grade, qids):
    """A crossval.json as relevance/crossval.py writes it: baselines (cosine without grades) and one model."""
    rng = np.random.default_rng(0)
    noise = rng.random(len(grade))
    systems = {"bm25-thresholds": {"pred": [[int(g) for g in np.clip(grade + (noise > 0.5), 1, 4)]],
                                   "score": [noise.tolist()]},
               "minilm-cosine": {"pred": [[]], "score": [noise.tolist()]},
               "model": {"pred": [[int(g) for g in grade]], "score": [list(map(float, model_score))]}}
    path.mkdir()
    (path / "crossval.json").write_text(json.dumps({"query_id": qids, "grade": [int(g) for g in grade],
                                                    "fold": [0] * len(grade), "k": 5, "seeds": [0],
                                                    "systems": systems}))


def test_merges_runs_pairs_them_and_prints_a_dash_where_a_system_has_no_grades(tmp_path, capsys):
    grade = np.array([1, 2, 3, 4] * 10)
    qids = [f"q{i // 8}" for i in range(len(grade))]  # 5 queries of 8 pairs, both classes in each
    write_run(tmp_path / "a", grade.astype(float), grade, qids)  # ranks perfectly
    write_run(tmp_path / "b", -grade.astype(float), grade, qids)  # ranks backwards
    rows = {r["system"]: r for r in cv_compare.main([f"good={tmp_path / 'a'}", f"bad={tmp_path / 'b'}"])}
    assert rows["good"]["x_good_auc_per_query"] == pytest.approx(1.0)
    assert rows["bad"]["x_good_auc_per_query"] == pytest.approx(0.0)
    assert rows["bad"]["x_auc_diff_vs_ref"][0] == pytest.approx(1.0)  # good minus bad, paired over queries
    table = capsys.readouterr().out
    cosine = next(line for line in table.splitlines() if line.startswith("| minilm-cosine"))
    assert "nan" not in table and cosine.split(" | ")[4] == "-"  # no accuracy without grades


def test_runs_on_other_pairs_are_refused(tmp_path):
    grade = np.array([1, 4] * 4)
    write_run(tmp_path / "a", grade.astype(float), grade, ["q0"] * 8)
    write_run(tmp_path / "b", grade.astype(float), grade[::-1], ["q0"] * 8)
    with pytest.raises(SystemExit, match="other folds or pairs"):
        cv_compare.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"])


def test_stack_is_fitted_on_the_other_folds_and_ranks_as_its_best_member(tmp_path):
    grade = np.array([1, 2, 3, 4] * 20)
    qids = [f"q{i // 8}" for i in range(len(grade))]  # 10 queries of 8 pairs
    fold = [int(q[1:]) % 2 for q in qids]
    write_run(tmp_path / "a", grade.astype(float), grade, qids)
    run = json.loads((tmp_path / "a" / "crossval.json").read_text())
    run["fold"] = fold  # two folds: each is predicted by a fit on the other
    # a score that ranks fold 0 forwards and fold 1 backwards: a fit on the other fold inverts each
    run["systems"]["flipped"] = {"pred": [[]], "score": [[float(g if f == 0 else -g) for g, f in zip(grade, fold)]]}
    (tmp_path / "a" / "crossval.json").write_text(json.dumps(run))
    rows = {r["system"]: r for r in cv_compare.main(
        [f"model={tmp_path / 'a'}", "--stack", "both=model+minilm-cosine", "--stack", "cross=flipped"])}
    assert rows["both"]["x_good_auc_per_query"] == pytest.approx(1.0)  # the model's perfect ranking survives
    assert rows["both"]["good_f1"] == pytest.approx(1.0)
    assert rows["cross"]["x_good_auc_per_query"] < 0.2  # a fit that saw its own fold would rank it right
    with pytest.raises(SystemExit, match="no system"):
        cv_compare.main([f"model={tmp_path / 'a'}", "--stack", "x=model+nope"])


def test_within_query_z_is_centred_per_query():
    x, qid = np.array([1.0, 2.0, 3.0, 10.0, 30.0]), np.array(["a", "a", "a", "b", "b"])
    z = within_query_z(x, qid)
    np.testing.assert_allclose([z[:3].mean(), z[3:].mean()], [0, 0], atol=1e-9)
    np.testing.assert_allclose(z[3:], [-1, 1], atol=1e-6)


def test_cross_fitted_probs_of_a_fold_ignore_its_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 5, 200)
    x = (y + rng.normal(0, 1, 200))[:, None]
    fold = np.arange(200) % 4
    p = cross_fitted_probs(x, y, fold)
    y2 = y.copy()
    y2[fold == 0] = rng.permutation(y2[fold == 0])  # fold 0's labels scrambled: its predictions must not move
    p2 = cross_fitted_probs(x, y2, fold)
    np.testing.assert_allclose(p[fold == 0], p2[fold == 0])
    assert not np.allclose(p[fold == 1], p2[fold == 1])  # the other folds' fits saw the change
    assert np.corrcoef(p[:, 2:].sum(1), y >= 3)[0, 1] > 0.5  # and P(Good) follows the informative feature
