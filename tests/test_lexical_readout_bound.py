"""experiments/lexical_readout_bound.py: the IDF coverage term it bounds (the stack it fits is
crossval.cross_fitted_probs, tested in test_cv_compare.py)."""

import pandas as pd

from experiments import lexical_readout_bound as script

PRODUCTS = pd.DataFrame({"product_id": ["1", "2", "3", "4"], "title": ["sony camera", "camera bag", "camera strap",
                                                                      "camera lens"], "brand": ["", "", "", ""]})


def test_idf_coverage_weights_the_rare_word_and_is_a_share():
    pairs = pd.DataFrame({"text": ["sony camera"] * 3 + ["pizza"], "title": ["sony camera", "sony tv", "camera bag",
                                                                           "sony camera"], "brand": [""] * 4})
    cov = script.idf_coverage(pairs, PRODUCTS)
    assert cov[0] == 1.0 and cov[3] == 0.0  # every query word found / none
    assert cov[1] > cov[2] > 0  # "sony" is in 1 of 4 products, "camera" in all: the rare word counts more
