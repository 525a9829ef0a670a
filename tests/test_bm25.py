import pandas as pd

from searchrl.lexical.bm25 import BM25Index

PRODUCTS = pd.DataFrame({
    "product_id": ["a", "b", "c", "d"],
    "title": ["Logitech wireless mouse", "Dell laptop 15 inch", "Laptop bag black", "JBL bluetooth speakers"],
    "brand": ["Logitech", "Dell", "Targus", "JBL"], "description": ["", "", "", ""], "category": ["", "", "", ""]})


def test_search_ranks_matching_products_and_stems():
    idx = BM25Index(PRODUCTS)
    hits = idx.search(["bluetooth speaker", "laptops", "printer"], k=3)
    assert hits[0][0][0] == "d"  # "speaker" matches "speakers" through stemming
    assert {p for p, _ in hits[1]} == {"b", "c"}
    assert hits[2] == []  # no term overlap: nothing, rather than zero-score filler


def test_pair_scores_match_full_scores():
    idx = BM25Index(PRODUCTS)
    full = idx.scores("laptop bag")
    pair = idx.pair_scores("laptop bag", ["c", "b", "a"])
    assert pair.tolist() == [full[2], full[1], full[0]]
    assert pair[0] > pair[1] > pair[2] == 0
