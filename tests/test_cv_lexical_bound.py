"""scripts/cv_lexical_bound.py: the IDF coverage term, the within-query z-score, and cross-fitting that never sees
the predicted fold's labels."""

import numpy as np
import pandas as pd
from conftest import load_script

PRODUCTS = pd.DataFrame({"product_id": ["1", "2", "3", "4"], "title": ["sony camera", "camera bag", "camera strap",
                                                                      "camera lens"], "brand": ["", "", "", ""]})


def test_idf_coverage_weights_the_rare_word_and_is_a_share():
    script = load_script("cv_lexical_bound")
    pairs = pd.DataFrame({"text": ["sony camera"] * 3 + ["pizza"], "title": ["sony camera", "sony tv", "camera bag",
                                                                           "sony camera"], "brand": [""] * 4})
    cov = script.idf_coverage(pairs, PRODUCTS)
    assert cov[0] == 1.0 and cov[3] == 0.0  # every query word found / none
    assert cov[1] > cov[2] > 0  # "sony" is in 1 of 4 products, "camera" in all: the rare word counts more


def test_within_query_z_is_centred_per_query():
    script = load_script("cv_lexical_bound")
    x, qid = np.array([1.0, 2.0, 3.0, 10.0, 30.0]), np.array(["a", "a", "a", "b", "b"])
    z = script.within_query_z(x, qid)
    np.testing.assert_allclose([z[:3].mean(), z[3:].mean()], [0, 0], atol=1e-9)
    np.testing.assert_allclose(z[3:], [-1, 1], atol=1e-5)


def test_cross_fitted_predictions_of_a_fold_ignore_its_labels():
    script = load_script("cv_lexical_bound")
    rng = np.random.default_rng(0)
    y = rng.integers(1, 5, 200)
    x = (y + rng.normal(0, 1, 200))[:, None]
    fold = np.arange(200) % 4
    p, pred = script.cross_fitted(x, y, fold)
    y2 = y.copy()
    y2[fold == 0] = rng.permutation(y2[fold == 0])  # fold 0's labels scrambled: its predictions must not move
    p2, pred2 = script.cross_fitted(x, y2, fold)
    np.testing.assert_allclose(p[fold == 0], p2[fold == 0])
    assert not np.allclose(p[fold == 1], p2[fold == 1])  # the others' fits saw the change
    assert np.corrcoef(p, y >= 3)[0, 1] > 0.5  # and P(Good) follows the informative feature
