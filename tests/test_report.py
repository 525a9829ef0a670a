"""The run report (report.html): self-contained, every section, numbers and escaping, "not run"
notes, malformed input, and the page in a real headless Chromium."""

import base64
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from searchrl.eval.report import SECTIONS, curve_metrics, main, render_html, render_report
from searchrl.eval.report_example import TRICKY_COT, TRICKY_QUERY, example_report
from searchrl.eval.report_figures import calibration_bins

PNG_DATA = "data:image/png;base64,"


class Page(HTMLParser):
    """What the tests read from a page: tags with attributes, h2 per section, the text of
    <pre> and example pairs, and table rows per section (``tables[section] = [[cells], ...]``,
    nested tables' rows after their parent row; a row of <th> cells only is a header)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.h2, self.tables, self.headers, self.pre, self.pairs = [], {}, {}, {}, [], []
        self.depth = {}  # (section, row index) -> how many tables deep the row is
        self._section = None
        self._rows, self._cells = [], []  # stacks: tables nest inside cells
        self._capture = None  # (tag, text parts) while inside an h2, pre or .pair
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self._section = attrs.get("id")
            self.tables[self._section], self.headers[self._section] = [], set()
        elif tag == "tr" and self._section:
            row = {"cells": [], "all_th": True}
            self.tables[self._section].append(row["cells"])
            self._rows.append((len(self.tables[self._section]) - 1, row))
            self.depth[self._section, len(self.tables[self._section]) - 1] = len(self._rows)
        elif tag in ("td", "th") and self._rows:
            self._rows[-1][1]["all_th"] &= tag == "th"
            self._cells.append([])
        elif tag == "h2" or tag == "pre" or (tag == "div" and attrs.get("class") == "pair"):
            self._capture = (tag, [])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cells:
            self._rows[-1][1]["cells"].append("".join(self._cells.pop()).strip())
        elif tag == "tr" and self._rows:
            index, row = self._rows.pop()
            if row["all_th"]:
                self.headers[self._section].add(index)
        elif tag == "section":
            self._section = None
        elif self._capture and tag == self._capture[0]:
            kind, parts = self._capture
            if kind == "h2":
                self.h2[self._section] = "".join(parts)
            else:
                (self.pre if kind == "pre" else self.pairs).append("".join(parts))
            self._capture = None

    def handle_data(self, data):
        for cell in self._cells:  # an outer cell's text includes its nested table's
            cell.append(data)
        if self._capture:
            self._capture[1].append(data)

    def row(self, section: str, first_cell: str) -> dict:
        """The row of a section's tables that starts with first_cell, keyed by the nearest header above it."""
        rows = self.tables[section]
        for i, r in enumerate(rows):
            if r and r[0] == first_cell and i not in self.headers[section]:
                header = rows[max(h for h in self.headers[section]
                                  if h < i and self.depth[section, h] == self.depth[section, i])]
                return dict(zip(header, r))
        raise AssertionError(f"no row {first_cell!r} in section {section!r}")


@pytest.fixture(scope="module")
def example():
    return example_report()


@pytest.fixture(scope="module")
def example_html(example):
    return render_html(example)


def test_every_section_with_heading_and_toc_link(example_html):
    page = Page(example_html)
    ids = [a.get("id") for t, a in page.tags if t == "section"]
    assert ids == list(SECTIONS)
    assert page.h2 == SECTIONS
    links = {a["href"] for t, a in page.tags if t == "a" and "href" in a}
    assert {f"#{sid}" for sid in SECTIONS} <= links
    assert "not run" not in example_html.lower().replace("(not run)", "")  # every section had input


def test_self_contained_no_network_no_script(example_html):
    page = Page(example_html)
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "poster", "data"):
            if name in attrs:
                assert attrs[name].startswith(("#", PNG_DATA)), f"<{tag} {name}={attrs[name][:60]!r}>"
    assert "url(" not in example_html  # no CSS fetching a font or image
    # URLs only as provenance text: every occurrence lies in the dataset section's provenance table.
    start = example_html.index('<section id="dataset">')
    prov = example_html.index("<h3>Provenance</h3>", start)
    end = example_html.index("</section>", prov)
    hits = [m.start() for m in re.finditer(r"https?://", example_html)]
    assert hits and all(prov < h < end for h in hits)


def test_figures_are_embedded_pngs(example_html):
    srcs = [a["src"] for t, a in Page(example_html).tags if t == "img"]
    # grade mix, confusion, reliability, beta, one per curves stage (4), retrieval curves
    assert len(srcs) == 9
    for src in srcs:
        assert src.startswith(PNG_DATA)
        img = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_DATA):])))
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert len(np.unique(np.asarray(img.convert("L")))) > 5  # something was drawn, not a blank canvas


def test_numbers_from_the_input_in_the_tables(example, example_html):
    page = Page(example_html)
    ds = example["dataset"]
    assert page.tables["dataset"][1] == ["products", str(ds["counts"]["products"])]
    train = page.row("dataset", "train")
    assert train["L4 Excellent"].startswith(f"{ds['grades_by_split']['train']['4']} (")
    assert train["total"] == str(sum(ds["grades_by_split"]["train"].values()))
    assert ds["provenance"]["files"][0]["sha256"] in example_html

    rel = example["relevance"]
    grpo = next(r for r in rel["rows"] if r["system"] == "grpo")
    cells = page.row("relevance", "grpo")
    lo, hi = grpo["x_ci"]["macro_f1"]
    assert cells["macro-F1"] == f"{grpo['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]"
    assert cells["accuracy"] == f"{grpo['accuracy']:.3f}"
    assert cells["AUC P(Good) per query"] == f"{grpo['x_good_auc_per_query']:.3f}"
    assert cells["F1 L2"] == f"{grpo['f1_L2']:.3f}"
    baseline = page.row("relevance", "bm25 score buckets")
    assert baseline["AUC P(Good) per query"] == "–"  # a metric the row lacks
    ceiling = page.row("relevance", "human raters (Chorus)")
    assert ceiling["macro-F1"] == "0.430–0.470" and ceiling["Good-F1"] == "0.850–0.880"
    assert ceiling["accuracy"] == "–"

    sft = page.row("stages", "relevance_sft")
    assert sft["status"] == "ran" and sft["wall time"] == "23m 30s"
    assert page.row("stages", "lora.r") == {"key": "lora.r", "default": "null", "value": "16"}
    failed = page.row("stages", "retriever_rgrpo")
    assert failed["status"].startswith("failed") and "CUDA out of memory" in failed["status"]
    assert "2h 14m" in example_html  # total wall time = the stages' sum (the example's run has none)

    rows = page.tables["retrieval"]
    assert rows[0] == ["system", "hitrate@10", "hitrate@100", "ndcg@10", "ndcg@100", "mrr@10", "goodrate@10",
                       "bm25_overlap@10", "quality@10", "train seconds"]
    rgrpo = next(r for r in example["retrieval"]["rows"] if r["system"] == "r-grpo")
    cells = page.row("retrieval", "r-grpo")
    assert cells["ndcg@10"] == f"{rgrpo['ndcg@10']:.3f}" and cells["train seconds"] == "1830.4"
    assert f"Chosen beta <strong>{example['tiering']['chosen_beta']:.3f}</strong>" in example_html


def test_special_characters_are_escaped(example_html):
    # The raw text never reaches the page as markup...
    assert TRICKY_QUERY not in example_html and "<script>alert" not in example_html
    assert "&lt;2m&gt; &amp;" in example_html
    assert "<braided>" not in example_html
    # ...and reads back as exactly the input text.
    page = Page(example_html)
    assert page.pairs[0].startswith(TRICKY_QUERY + " → ")
    assert TRICKY_COT in page.pre
    failed = page.row("stages", "retriever_rgrpo")
    assert "<retried with batch 8 & failed>" in failed["status"]


def test_json_round_trip_renders_the_same_page(example, example_html):
    # The contract is JSON-friendly: retrieval curve K keys become strings and still work.
    assert render_html(json.loads(json.dumps(example))) == example_html


def test_missing_sections_render_not_run_notes(tmp_path):
    report = {"run": {"name": "half a run", "date": "2026-11-02", "wall_seconds": 75.0},
              "stages": [{"name": "data", "status": "ran", "wall_seconds": 3.0},
                         {"name": "relevance_sft", "status": "failed", "message": "boom"}],
              "relevance": {"rows": [{"system": "sft", "macro_f1": 0.5}]}}
    out = render_report(report, tmp_path / "sub" / "report.html")
    html = out.read_text()
    page = Page(html)
    assert [a.get("id") for t, a in page.tags if t == "section"] == list(SECTIONS)
    for sid in ("dataset", "tiering", "curves", "retrieval", "examples"):
        body = html[html.index(f'<section id="{sid}">'):]
        body = body[:body.index("</section>")]
        assert 'class="not-run"' in body, sid
    for sid in ("stages", "relevance"):
        body = html[html.index(f'<section id="{sid}">'):]
        assert 'class="not-run"' not in body[:body.index("</section>")], sid
    assert not [t for t, _ in page.tags if t == "img"]  # no confusion or calibration input: no figures
    assert page.row("relevance", "sft") == {"system": "sft", "macro-F1": "0.500"}
    assert "1m 15s" in html  # run.wall_seconds wins over the stages' sum

    empty = Page(render_html({}))
    assert len([1 for t, a in empty.tags if t == "p" and a.get("class") == "not-run"]) == len(SECTIONS)


@pytest.mark.parametrize("breakage, field", [
    (lambda r: r["stages"][0].update(status="done"), "stages[0].status"),
    (lambda r: r["relevance"]["rows"][-1].update(confusion=[[1, 2, 3]] * 3), "confusion"),
    (lambda r: r["relevance"]["calibration"]["gold"].pop(), "relevance.calibration"),
    (lambda r: r["relevance"]["calibration"]["p_good"].__setitem__(0, 1.5), "calibration.p_good"),
    (lambda r: r["relevance"].update(confusion_system="nobody"), "confusion_system"),
    (lambda r: r["curves"]["dpo"][0].pop("step"), "curves.dpo[0]"),
    (lambda r: r["dataset"].pop("counts"), "dataset.counts"),
    (lambda r: r["examples"][0].update(gold=5), "examples[0].gold"),
    (lambda r: r["relevance"]["rows"][-1].update(x_parse_rate=1.5), "x_parse_rate"),
    (lambda r: r["relevance"]["rows"][1]["x_free_signal_failures"][0].pop("signal"), "x_free_signal_failures[0]"),
])
def test_malformed_input_names_the_field_and_writes_nothing(example, tmp_path, breakage, field):
    report = copy.deepcopy(example)
    breakage(report)
    out = tmp_path / "report.html"
    with pytest.raises(ValueError, match=re.escape(field)):
        render_report(report, out)
    assert not out.exists()


def test_calibration_bins_by_hand():
    bins = calibration_bins([0.05, 0.15, 0.12, 1.0, 0.95], [1, 3, 4, 2, 4], bins=10)
    assert [(b["lo"], b["count"]) for b in bins] == [(0.0, 1), (0.1, 2), (0.9, 2)]  # P = 1.0 in the last bin
    assert bins[1]["mean_p_good"] == pytest.approx(0.135) and bins[1]["observed_good"] == 1.0
    assert bins[0]["observed_good"] == 0.0 and bins[2]["observed_good"] == 0.5


def test_curve_metrics_known_first_absent_skipped():
    rows = [{"step": 1, "lr": 1e-5, "loss": 2.0, "note": "warmup", "done": True},
            {"step": 2, "lr": 1e-5, "loss": 1.5, "valid_macro_f1": 0.4, "kl": 0.01}]
    # strings and booleans are not metrics; absent known metrics (reward_mean, ...) are skipped
    assert curve_metrics(rows) == ["loss", "kl", "valid_macro_f1", "lr"]
    html = render_html({"curves": {"export": [{"step": 1, "note": "x"}]}})
    assert "No numeric metrics logged." in html


def test_example_entry_point(tmp_path, capsys):
    out = tmp_path / "example.html"
    assert main(["--example", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text(encoding="utf-8") == render_html(example_report())


def test_reasoning_tables_and_the_free_signal_warning_box(example, example_html):
    page = Page(example_html)
    final = example["relevance"]["rows"][-1]
    cells = page.row("relevance", final["system"])  # the main table's row comes first
    assert cells["macro-F1"].startswith(f"{final['macro_f1']:.3f}")
    section = example_html[example_html.index('<section id="relevance">'):]
    section = section[:section.index("</section>")]
    reasoning = Page('<section id="reasoning">' + section[section.index("<h3>Reasoning of decoded completions</h3>"):]
                     + "</section>")  # the reasoning tables alone
    row = reasoning.row("reasoning", final["system"])
    assert row["parse rate"] == f"{final['x_parse_rate']:.3f}"
    assert row["step agreement"] == f"{final['x_step_agreement']:.3f}"
    assert row["self-consistency"] == f"{final['x_self_consistency']:.3f}"
    assert row["discriminative hallucination"] == f"{final['x_discriminative_hallucination_rate']:.3f}"
    assert row["rule adherence"] == f"{final['x_rule_adherence']:.3f}"
    steps = [r for r in reasoning.tables["reasoning"] if r and r[0] == final["system"]][1]
    assert steps[1:] == [f"{final[f'x_step_agreement_{s}']:.3f}" for s in ("query", "item", "category", "attribute",
                                                                            "verdict")]
    assert [r["system"] for r in example["relevance"]["rows"] if "x_parse_rate" in r] == [final["system"]]
    # the warning box: at the top of the section, one line per failed check
    failure = example["relevance"]["rows"][1]["x_free_signal_failures"][0]
    box = section[section.index('<div class="warning" role="alert">'):section.index("</div>")]
    assert section.index('<div class="warning"') < section.index("<table>")
    assert (f"{failure['system']} is below {failure['signal']} on {failure['measure']}: {failure['model']:.3f} "
            f"&lt; {failure['signal_value']:.3f}") in box
    plain = copy.deepcopy(example)
    for r in plain["relevance"]["rows"]:
        r.pop("x_free_signal_failures", None)
    assert 'class="warning"' not in render_html(plain)
    none_parsed = {"relevance": {"rows": [{"system": "sft", "macro_f1": 0.5, "x_parse_rate": 0.0,
                                           "x_self_consistency": None}]}}
    assert Page(render_html(none_parsed)).row("relevance", "sft") == {"system": "sft", "macro-F1": "0.500"}
    assert "<td class=\"num\">0.000</td><td class=\"num\">–</td>" in render_html(none_parsed)


# ---------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # without these Chromium keeps trying to reach Google's services, which this closed network refuses
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--window-size=1280,900",
]


def _browser_or_skip() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium/chromedriver not installed (scripts/setup_browser.sh: "
                    "apt-get install chromium chromium-driver, as root)")
    return chromium, driver


def test_report_in_headless_chromium(tmp_path):
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    # Through the module's entry point, as a person eyeballing the page would run it.
    subprocess.run([sys.executable, "-m", "searchrl.eval.report", "--example", str(page)], check=True,
                   env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver path: selenium then never runs selenium-manager (which downloads drivers).
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        driver.get(page.as_uri())
        assert driver.title.startswith("chorus-example")
        sections = driver.execute_script(
            "return Array.from(document.querySelectorAll('section')).map("
            "s => [s.id, s.querySelector('h2') ? s.querySelector('h2').textContent : null])")
        assert sections == [[sid, heading] for sid, heading in SECTIONS.items()]
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == 9
        assert all(complete and w > 0 and h > 0 for _, complete, w, h in images), images
        # no script of any kind ran or exists: the CoT's "<script>" stayed text
        assert driver.execute_script("return document.scripts.length") == 0
        pair = driver.execute_script("return document.querySelector('.example .pair').textContent")
        assert pair.startswith(TRICKY_QUERY)
        if hasattr(driver, "get_log"):
            severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not severe, severe
        height = driver.execute_script("return document.documentElement.scrollHeight")
        assert height > 3000  # the whole report laid out, not an error page
        driver.set_window_size(1280, min(height + 200, 8000))  # + the window's own chrome
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 3000 and img.shape[1] >= 1200
    # non-blank: many colours (figures) and a good share of non-white pixels (text, tables, plots)
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    assert len(np.unique(packed)) > 200
    assert (img.min(axis=2) < 200).mean() > 0.02


def test_hybrid_rows_and_route_columns_render_from_the_retrieval_table(tmp_path):
    from types import SimpleNamespace

    from searchrl.metrics.measures import write_metrics_json
    from searchrl.pipeline.collect import _retrieval

    def row(system, base, added, overlap):  # the keys run_retriever_stages writes
        return {"system": system, "hitrate@10": base, "ndcg@10": base, "mrr@10": base, "hitrate@100": base + 0.2,
                "ndcg@100": base, "mrr@100": base, "n_queries": 27, "bm25_overlap@10": overlap,
                "added_recall@10": added, "quality@10": 0.5, "bm25_overlap@100": overlap, "added_recall@100": added,
                "quality@100": 0.5, "goodrate@10": 0.4}
    rows = [row("bm25", 0.7, 0.0, 1.0), {**row("sft", 0.6, 0.1, 0.3), "x_train_seconds": 30.0},
            {**row("hybrid(bm25+sft)", 0.75, 0.15, 0.6), "x_train_seconds": 30.0}]
    write_metrics_json(tmp_path / "retriever" / "retrieval.json", "retrieval", "chorus", "test", rows)
    section = _retrieval(SimpleNamespace(dir=lambda stage: tmp_path / stage))
    assert set(section["curves"]["ndcg"]) == {"bm25", "sft", "hybrid(bm25+sft)"}
    page = Page(render_html({"retrieval": section}))
    header = page.tables["retrieval"][0]
    assert header[:13] == ["system", "hitrate@10", "hitrate@100", "ndcg@10", "ndcg@100", "mrr@10", "goodrate@10",
                           "bm25_overlap@10", "bm25_overlap@100", "added_recall@10", "added_recall@100",
                           "quality@10", "train seconds"]
    hybrid = page.row("retrieval", "hybrid(bm25+sft)")
    assert hybrid["added_recall@10"] == "0.150" and hybrid["bm25_overlap@100"] == "0.600"
    assert hybrid["train seconds"] == "30.0" and page.row("retrieval", "bm25")["train seconds"] == "\u2013"
