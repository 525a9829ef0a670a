"""Property-based fuzzing of the scorer's input reader (relevance.scorer.read_scoring_requests).

The files are as hostile as the importer's (see test_fuzz_importer.py, whose file generator is reused):
encodings, BOMs, CRLF, NULs, quotes, huge fields, duplicate or missing columns, ragged rows, and an
``attributes`` column holding broken, deeply nested or oversized JSON. The property: the read ends in
requests plus counted skips that add up to the rows of the file (with on_error=skip), or a located
UserError; every request it returns can be turned into a prompt and its query written back out.
"""

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz_importer import TEXT, assert_clear, table_file, write_file

from searchrl.data.schema import DataError
from searchrl.errors import UserError
from searchrl.relevance.format.prompt import build_prompt
from searchrl.relevance.scoring.scorer import read_scoring_requests

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ATTRIBUTES = st.one_of(st.sampled_from(["", '{"colour": "red"}', "{broken", "[1, 2]", '"text"', "5", "null",
                                        "[" * 50_000, '{"n": ' + "9" * 5000 + "}", '{"a": "\\ud800"}',
                                        '{"a": {"b": [1, {"c": null}]}}']), TEXT)
COLUMNS = {"query": st.one_of(st.sampled_from(["laptop", "mouse", ""]), TEXT), "title": TEXT,
           "product_id": st.sampled_from(["P1", "", "1.0"]), "brand": TEXT, "attributes": ATTRIBUTES}
VALID = {"query": st.sampled_from(["laptop", "usb c cable"]), "title": st.sampled_from(["Dell XPS", 'a "b", c']),
         "product_id": st.sampled_from(["P1", "P2"]), "brand": st.sampled_from(["", "Dell"]),
         "attributes": st.sampled_from(["", '{"colour": "red"}'])}


@FUZZ
@given(spec=table_file(COLUMNS, VALID), on_error=st.sampled_from(["raise", "skip"]))
def test_scoring_input_is_read_located_or_counted(spec, on_error):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pairs.{spec['fmt']}"
        rows = write_file(path, spec)
        try:
            requests, policy = read_scoring_requests(path, on_error)
        except UserError as e:  # anything else is a crash and fails the test with its traceback
            event(f"{on_error}: {type(e).__name__}")
            assert_clear(e, [str(path)])
            return
        event(f"{on_error}: read")
        pairs = sum(len(products) for _, products in requests)
        assert pairs + policy.total_skipped == rows  # nothing dropped without a count
        assert on_error == "skip" or policy.total_skipped == 0
        for query, products in requests:
            assert isinstance(query, str) and query.strip()
            query.encode("utf-8")  # it is written back out with the scores
            for product in products:
                assert isinstance(product["title"], str) and product["title"].strip()
                assert isinstance(product.get("attributes", {}), (dict, str))
                product["product_id"].encode("utf-8")
                build_prompt(query, product)


@pytest.mark.parametrize("text, message", [
    ('{"query": "laptop", "title": "bag", "attributes": "' + "[" * 50_000 + '"}\n',
     r"pairs.jsonl:line 1: attributes: not a JSON object \(nested too deeply\)"),
    ('{"query": "laptop", "title": "bag", "attributes": "{\\"n\\": ' + "9" * 5000 + '}"}\n',
     r"pairs.jsonl:line 1: attributes: not a JSON object \(Exceeds the limit \(4300 digits\)"),
    ('{"query": "laptop", "title": "' + "x" * 100_000 + '", "attributes": 5}\n',
     r"pairs.jsonl:line 1: attributes: expected a JSON object, got int"),
])
def test_bad_attributes_are_located(tmp_path, text, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as e:
        read_scoring_requests(path)
    assert len(str(e.value)) < 300


def test_a_missing_column_is_one_error_at_the_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("query,name\nlaptop,Dell XPS\nmouse,Logitech\n")
    # before: one "line 2: title: missing" per row, or with skip every row skipped and the run "succeeding"
    with pytest.raises(DataError, match=r"pairs.csv:header: title: missing column\(s\) \['title'\]"):
        read_scoring_requests(path, on_error="skip")
