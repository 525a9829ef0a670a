"""CoT teachers: the rule teacher (human label wins) and the LLM teacher against a real local HTTP server."""

import itertools
import json
import subprocess
import sys
import textwrap
import time
import urllib.request

import pandas as pd
import pytest

from searchrl.relevance.format.parser import RULE_TABLE, grade_implied_by_verdicts, is_consistent, parse_completion
from searchrl.relevance.format.prompt import PromptConfig
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.llm_teacher import LLMError, LLMTeacher, LLMTeacherConfig
from searchrl.relevance.rules.teacher import RuleTeacher, TeacherReport, condition_verdicts
from searchrl.relevance.train.examples import build_examples


@pytest.fixture(scope="module")
def engine():
    return RuleEngine.from_yaml()


LAPTOP = {"title": 'HP Pavilion dv7-1211ea Notebook Silver 43.2 cm (17") 4 GB DDR2-SDRAM 250 GB HDD', "brand": "HP",
          "description": "", "category": "Notebook", "attributes": json.dumps({"product_colour": "Silver"})}
CASE = {"title": 'Targus TBC005EU notebook case 43.2 cm (17") Briefcase Black', "brand": "Targus",
        "description": "", "category": "", "attributes": "{}"}


def check(completion, gold, order="label_first"):
    parsed = parse_completion(completion, order)
    assert parsed.ok, parsed.format_errors
    assert parsed.grade == gold and is_consistent(parsed.grade, parsed.verdicts)
    return parsed


# ---------------------------------------------------------------------------- rule teacher

@pytest.mark.parametrize("order", ["label_first", "cot_first"])
def test_rule_teacher_agrees(engine, order):
    cfg = PromptConfig(order=order)
    out = RuleTeacher(engine, cfg).write("laptop", LAPTOP, 4)
    assert out.agreed and out.teacher_grade == 4
    parsed = check(out.completion, 4, order)
    assert parsed.verdicts["category"] == "match" and parsed.verdicts["item"] == "laptop"


@pytest.mark.parametrize("gold", [1, 2, 3])
def test_rule_teacher_conditions_on_the_gold_grade(engine, gold):
    out = RuleTeacher(engine, on_disagree="condition").write("laptop", LAPTOP, gold)  # the rules say L4
    assert not out.agreed and out.teacher_grade == 4
    parsed = check(out.completion, gold)
    assert "rules alone gave L4" in parsed.notes["verdict"]
    if gold == 1:  # L1 is not allowed after category match: the category step had to move
        assert parsed.verdicts["category"] != "match" and "rules said match" in parsed.notes["category"]


def test_rule_teacher_drops(engine):
    teacher = RuleTeacher(engine, on_disagree="drop")
    assert teacher.write("laptop", CASE, 4) is None
    assert teacher.write("laptop", CASE, 1).agreed
    with pytest.raises(ValueError):
        RuleTeacher(engine, on_disagree="ignore")


def test_condition_verdicts_imply_the_gold_grade_and_change_least():
    for (cat, attr), gold in itertools.product(RULE_TABLE, [1, 2, 3, 4]):
        verdicts = {"query": "x", "item": "y", "category": cat, "attribute": attr}
        new = condition_verdicts(verdicts, gold)
        assert grade_implied_by_verdicts(new) == gold and is_consistent(gold, new), (cat, attr, gold, new)
        if RULE_TABLE[(cat, attr)][0] == gold:
            assert new == verdicts  # nothing to change
        elif cat == "match" and gold in (2, 3):
            assert new["category"] == "match"  # the attribute alone can reach it: the category stays
        assert new["query"] == "x" and new["item"] == "y"
    assert condition_verdicts({"category": "match", "attribute": "match"}, 1)["category"] == "mismatch"


def pairs_frame():
    rows = [("q1", "p1", "laptop", LAPTOP, 4), ("q1", "p2", "laptop", CASE, 1), ("q2", "p1", "laptop bag", LAPTOP, 1),
            ("q2", "p2", "laptop bag", CASE, 4), ("q3", "p1", "silver laptop", LAPTOP, 2)]
    return pd.DataFrame([{"query_id": q, "product_id": p, "text": t, "grade": g, **prod} for q, p, t, prod, g in rows])


def test_build_examples(engine):
    df = pairs_frame()
    examples, report = build_examples(df, RuleTeacher(engine), PromptConfig())
    assert len(examples) == 5 and report.agreed == 4 and report.conditioned == 1 and report.dropped == 0
    assert report.by_gold[2] == {"agreed": 0, "conditioned": 1, "dropped": 0}
    assert set(examples[0]) == {"prompt", "completion", "grade", "query", "product", "query_id", "product_id"}
    for ex, row in zip(examples, df.itertuples()):
        assert f"Query: {row.text}" in ex["prompt"] and ex["prompt"].endswith("Answer:\n")
        assert (ex["query_id"], ex["product_id"], ex["grade"]) == (row.query_id, row.product_id, row.grade)
        check(ex["completion"], row.grade)
    examples, report = build_examples(df, RuleTeacher(engine, on_disagree="drop"))
    assert len(examples) == 4 and report.dropped == 1 and report.as_dict()["agreement"] == 0.8
    with pytest.raises(ValueError, match="grade"):
        build_examples(df.drop(columns=["grade"]), RuleTeacher(engine))


def test_report_counts():
    r = TeacherReport()
    for gold, outcome in [(4, "agreed"), (4, "conditioned"), (1, "dropped")]:
        r.add(gold, outcome)
    assert (r.agreed, r.conditioned, r.dropped, r.total) == (1, 1, 1, 3) and r.by_gold[4]["conditioned"] == 1


# ---------------------------------------------------------------------------- LLM teacher over HTTP

SERVER = textwrap.dedent(r'''
    import json, re, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"calls": 0, "auth": None}
    lock = threading.Lock()
    ROWS = {4: ("match", "match"), 3: ("match", "partial"), 2: ("related", "match"), 1: ("mismatch", "match")}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock:
                self._send(200, dict(state))

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["calls"] += 1
                n = state["calls"]
                state["auth"] = self.headers.get("Authorization")
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if n == 1:
                return self._send(500, {"error": "warming up"})  # the first request always fails
            text = " ".join(m["content"] for m in payload["messages"])
            if "FORBIDDEN" in text:
                return self._send(403, {"error": "no access"})
            if "SLOW" in text:
                time.sleep(2)
            gold = int(re.search(r"Human grade: L([1-4])", text).group(1))
            cat, attr = ROWS[gold]
            content = (f"<L{gold}>\nquery: the user wants a laptop => intent: laptop\n"
                       f"item: an HP notebook => type: laptop\ncategory: compared => category: {cat}\n"
                       f"attribute: checked => attribute: {attr}\nverdict: so => grade: L{gold}")
            if "GARBAGE" in text:
                content = "Sure! I think this product is quite relevant."
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')


@pytest.fixture
def server(tmp_path):
    script = tmp_path / "fake_llm.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_state(url):
    with urllib.request.urlopen(url + "/state", timeout=5) as r:
        return json.loads(r.read())


def make_teacher(url, tmp_path, **kw):
    cfg = LLMTeacherConfig(base_url=url + "/v1", model="fake-model", cache_dir=str(tmp_path / "cache"),
                           backoff_s=0.01, max_backoff_s=0.05, api_key_env="SEARCHRL_TEST_KEY", **kw)
    return LLMTeacher(cfg, PromptConfig())


def test_llm_teacher_retries_caches_and_sends_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHRL_TEST_KEY", "sk-test")
    teacher = make_teacher(server, tmp_path)
    out = teacher.write("laptop", LAPTOP, 3)
    parsed = check(out.completion, 3)
    assert parsed.verdicts["attribute"] == "partial" and parsed.notes["item"] == "an HP notebook"
    assert teacher.stats["retries"] == 1 and teacher.stats["llm_written"] == 1
    state = server_state(server)
    assert state["calls"] == 2 and state["auth"] == "Bearer sk-test"  # one 500, one answer
    # a new teacher over the same cache pays nothing
    again = make_teacher(server, tmp_path)
    assert again.write("laptop", LAPTOP, 3).completion == out.completion
    assert again.stats["cache_hits"] == 1 and again.stats["requests"] == 0
    assert server_state(server)["calls"] == 2
    # a different gold grade is a different request
    check(again.write("laptop", LAPTOP, 1).completion, 1)
    assert server_state(server)["calls"] == 3


def test_llm_teacher_renders_our_order(server, tmp_path):
    cfg = LLMTeacherConfig(base_url=server, model="m", backoff_s=0.01, api_key_env="")  # no /v1, no key, no cache
    teacher = LLMTeacher(cfg, PromptConfig(order="cot_first"))
    out = teacher.write("laptop", LAPTOP, 2)
    assert out.completion.endswith("<L2>")
    check(out.completion, 2, "cot_first")
    assert server_state(server)["auth"] is None


def test_llm_teacher_falls_back_on_unusable_answers(server, tmp_path):
    teacher = make_teacher(server, tmp_path, parse_attempts=2)
    product = dict(CASE, title="GARBAGE " + CASE["title"])
    out = teacher.write("laptop", product, 1)
    check(out.completion, 1)  # written by the rule teacher instead
    assert teacher.stats["unusable_answers"] == 2 and teacher.stats["fallback"] == 1
    assert teacher.stats["llm_written"] == 0


def test_llm_teacher_endpoint_failures(server, tmp_path):
    slow = make_teacher(server, tmp_path, timeout_s=0.3, max_retries=1)
    server_state(server)  # not a POST: does not count
    out = slow.write("laptop", dict(LAPTOP, title="SLOW " + LAPTOP["title"]), 4)
    check(out.completion, 4)
    assert slow.stats["endpoint_failed"] == 1 and slow.stats["fallback"] == 1
    with pytest.raises(LLMError, match="403"):  # a client error is a configuration problem: no retries, no fallback
        make_teacher(server, tmp_path).write("laptop", dict(LAPTOP, title="FORBIDDEN"), 4)
    dead = LLMTeacher(LLMTeacherConfig(base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.01))
    check(dead.write("laptop", LAPTOP, 4).completion, 4)
    assert dead.stats["requests"] == 2 and dead.stats["fallback"] == 1


def test_llm_teacher_write_many_and_sft(server, tmp_path):
    teacher = make_teacher(server, tmp_path, max_workers=4)
    items = [("laptop", LAPTOP, g) for g in (1, 2, 3, 4)] * 2
    start = time.perf_counter()
    outs = teacher.write_many(items)
    assert time.perf_counter() - start < 10
    assert [parse_completion(o.completion).grade for o in outs] == [1, 2, 3, 4] * 2
    assert teacher.stats["cache_hits"] + teacher.stats["llm_written"] >= 8
    examples, report = build_examples(pairs_frame(), teacher)
    assert len(examples) == 5 and report.dropped == 0 and report.total == 5
    for ex in examples:
        check(ex["completion"], ex["grade"])
