"""scripts/cv_lexical_bound.py: the IDF coverage term it bounds (the stack it fits is cv_compare.py's, tested
there)."""

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
