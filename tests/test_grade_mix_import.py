"""experiments/grade_mix_import.py: the re-mix keeps every graded-up judgment and reaches the asked L4 share."""

import numpy as np
import pandas as pd
import pytest

from experiments import grade_mix_import as script


def judgments(n1=600, n2=60, n3=40, n4=300) -> pd.DataFrame:
    grades = [1] * n1 + [2] * n2 + [3] * n3 + [4] * n4
    return pd.DataFrame({"query_id": [f"q{i % 20}" for i in range(len(grades))], "product_id": range(len(grades)),
                         "grade": grades})


def test_remix_drops_only_l1_rows_and_reaches_the_l4_share():
    j = judgments()
    out = script.remix(j, l4_share=2 / 3, seed=0)
    assert (out["grade"] > 1).sum() == (j["grade"] > 1).sum()  # L2-L4 all kept
    assert 0 < (out["grade"] == 1).sum() < 600
    assert abs((out["grade"] == 4).mean() - 2 / 3) < 0.05
    np.testing.assert_array_equal(out.index, script.remix(j, 2 / 3, seed=0).index)  # seeded


def test_remix_refuses_a_share_it_cannot_reach():
    with pytest.raises(SystemExit, match="cannot reach"):
        script.remix(judgments(n2=300), l4_share=0.6)  # L2+L3 alone already exceed 40% of the pairs
