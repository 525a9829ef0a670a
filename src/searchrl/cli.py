"""The ``searchrl`` command line: the argument parser, one sub-command per stage (commands/ runs them).

A command's module (commands/data.py, relevance.py, retrieval.py, run.py) is imported only when it runs,
so ``searchrl --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _command(module: str, name: str):
    """``searchrl.commands.<module>.<name>``, imported when the command runs (so --help does not load torch)."""
    def run(args):
        return getattr(importlib.import_module(f"searchrl.commands.{module}"), name)(args)
    return run


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers, e.g. 0.6,0.2,0.2")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers (train,valid,test)")
    return parts


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the query-level split (default 0)")
    p.add_argument("--fractions", type=_fractions, default=(0.6, 0.2, 0.2),
                   help="train,valid,test fractions of queries (default 0.6,0.2,0.2)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad rows: stop with an error naming file/line/field (default), or skip and count them")


def _add_run_commands(sub) -> None:
    """The whole pipeline, and the quickstart."""
    pl = sub.add_parser("pipeline", help="every stage on a dataset (prepare/import, baselines, SFT, tiering, pass@N, DPO, "
                                         "GRPO, export, retriever, evaluation) and a report.html; resumable")
    pl.add_argument("--config", default="quickstart",
                    help="pipeline YAML, or a packaged one: quickstart (default, ~15 min on 2 cores), full "
                         "(GPU), llm (SmolLM2-135M through every relevance recipe, ~60 min on 2 cores)")
    src = pl.add_mutually_exclusive_group()
    src.add_argument("--data", help="a prepared dataset directory (e.g. from `searchrl data import`)")
    src.add_argument("--dataset", help="a registered dataset to prepare (chorus, esci-sample, ...)")
    pl.add_argument("--mirror", default=None, help="local mirror of upstream data files ($SEARCHRL_DATA_MIRROR)")
    pl.add_argument("--out", required=True, help="run directory: one sub-directory per stage, report.html")
    pl.add_argument("--stages", help="comma-separated stages to run (default: the config's); e.g. sft,tiering,export")
    pl.add_argument("--until", help="stop after this stage")
    pl.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config field, e.g. sft.optim.lr=1e-4 or grpo.rollout.group_size=4")
    pl.add_argument("--dry-run", action="store_true", help="print the plan (stages, reused or not, estimates) and exit")
    pl.set_defaults(func=_command("run", "cmd_pipeline"))
    q = sub.add_parser("quickstart", help="the main job on embedded defaults: the pipeline on Chorus with the quickstart "
                                          "config (= pipeline --config quickstart --dataset chorus)")
    q.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    q.add_argument("--mirror", default=None, help="local mirror of upstream data files ($SEARCHRL_DATA_MIRROR)")
    q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the quickstart pipeline config, e.g. sft.optim.max_steps=20")
    q.set_defaults(func=_command("run", "cmd_quickstart"))


def _add_data_commands(sub) -> None:
    """Datasets: prepare by name, import, synthetic pairs, stats."""
    data = sub.add_parser("data", help="prepare, import and describe datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    d = dsub.add_parser("prepare", help="fetch a dataset by name (sha256-verified) into canonical tables")
    d.add_argument("name", choices=["chorus", "esci", "esci-sample", "wands"])
    d.add_argument("--out", default=None, help="output directory (default data/NAME)")
    d.add_argument("--mirror", default=None, help="local mirror of upstream files ($SEARCHRL_DATA_MIRROR)")
    d.add_argument("--pin", action="append", metavar="FILE=SHA256",
                   help="sha256 for a file the registry cannot pin (WANDS product.csv, label.csv)")
    d.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. locale=us version=small for esci")
    d.add_argument("--no-download", action="store_true", help="use only the cache and the mirror")
    _split_args(d)
    d.set_defaults(func=_command("data", "cmd_data_prepare"))

    i = dsub.add_parser("import", help="turn your own CSV/TSV/JSONL/Parquet files into canonical tables")
    i.add_argument("--judgments", help="judgments file: query (or query_id), product_id, label")
    i.add_argument("--products", help="products file (default: product fields from the judgments rows)")
    i.add_argument("--queries", help="queries file: query_id, text")
    i.add_argument("--mapping", help="YAML column mapping (see searchrl.data.importer)")
    i.add_argument("--map", action="append", metavar="TABLE.FIELD=COLUMN", help="column mapping flag")
    i.add_argument("--labels", help="label map, e.g. Exact=4,Partial=3,Irrelevant=1 (default: labels are 1-4)")
    i.add_argument("--name", default="custom", help="dataset name recorded in dataset.json")
    i.add_argument("--out", required=True, help="output directory")
    _split_args(i)
    i.set_defaults(func=_command("data", "cmd_data_import"))

    sy = dsub.add_parser("synthetic", help="rule-graded pairs for queries written from a dataset's catalogue, "
                                            "as a dataset (what `train sft --set synthetic_queries=N` adds)")
    sy.add_argument("--data", required=True, help="prepared dataset directory (its catalogue and held-out queries)")
    sy.add_argument("--queries", type=int, default=150, help="synthetic queries to write")
    sy.add_argument("--per-query", type=int, default=8, help="candidates per query")
    sy.add_argument("--seed", type=int, default=999, help="a seed other than training's (0) gives unseen queries")
    sy.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split of every query")
    sy.add_argument("--rules", default="", help="rule YAML (default: the packaged rules.yaml)")
    sy.add_argument("--out", required=True, help="output dataset directory")
    sy.set_defaults(func=_command("data", "cmd_data_synthetic"))

    s = dsub.add_parser("stats", help="counts, grade distribution per split, judgments per query")
    s.add_argument("dir")
    s.set_defaults(func=_command("data", "cmd_data_stats"))


def _add_train_commands(sub) -> None:
    """The trainers, and pass@N sampling between SFT and DPO."""
    train = sub.add_parser("train", help="train a model")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="STAGE")
    ts = tsub.add_parser("sft", help="label-first CoT SFT of the relevance LLM on rule-teacher completions")
    ts.add_argument("--config", help="YAML config (fields of searchrl.relevance.train.sft.SFTConfig); without it (or "
                    "'default'), SFTConfig's defaults: the default relevance model (configs/sft_chorus.yaml)")
    ts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ts.set_defaults(func=_command("relevance", "cmd_train_sft"))
    td = tsub.add_parser("dpo", help="DPO of the SFT model on preference pairs (from `searchrl sample`)")
    td.add_argument("--config", help="YAML config (fields of searchrl.relevance.train.dpo.DPOConfig)")
    td.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    td.set_defaults(func=_command("relevance", "cmd_train_dpo"))
    tg = tsub.add_parser("grpo", help="GRPO of the SFT model: grade reward, dynamic sampling, class-balanced prompts")
    tg.add_argument("--config", help="YAML config (fields of searchrl.relevance.train.grpo.GRPOConfig)")
    tg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    tg.set_defaults(func=_command("relevance", "cmd_train_grpo"))
    trr = tsub.add_parser("retriever", help="dense retriever: sft (InfoNCE), hardneg (mined negatives), rgrpo, or all")
    trr.add_argument("--stage", choices=["sft", "hardneg", "rgrpo", "all"],
                     help="overrides the config's stage; all = sft, then hardneg and rgrpo from it, then a table")
    trr.add_argument("--relevance-model", help="--stage all: the relevance model rewarding rgrpo and grading goodrate")
    trr.add_argument("--ablations", action="store_true", help="--stage all: also rgrpo without each reward term")
    trr.add_argument("--split", default="test", help="--stage all: split of the table (default test)")
    trr.add_argument("--out", help="--stage all: run directory (default: the config's output_dir)")
    trr.add_argument("--config", help="YAML config (fields of searchrl.retrieval.config.RetrieverConfig)")
    trr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    trr.set_defaults(func=_command("retrieval", "cmd_train_retriever"))
    sp = sub.add_parser("sample", help="pass@N sampling from a relevance model: pass@k table and DPO preference pairs")
    sp.add_argument("--model", required=True, help="model directory (e.g. runs/sft/final)")
    sp.add_argument("--data", required=True, help="prepared dataset directory")
    sp.add_argument("--n", type=int, required=True, help="samples per prompt")
    sp.add_argument("--split", default="train", choices=["train", "valid", "test"])
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--max-new-tokens", type=int, default=256)
    sp.add_argument("--prompts-per-batch", type=int, default=8, help="prompts per sampling batch (x n rows)")
    sp.add_argument("--max-prompts", type=int, default=0, help="a seeded subset of this many pairs; 0 = all")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--rules", default=None, help="rule YAML of the teacher (default: the packaged rules.yaml)")
    sp.add_argument("--out", required=True, help="preference pairs JSONL (prompt, chosen, rejected, ...)")
    sp.add_argument("--json", help="write the pass@k table as JSON here")
    sp.set_defaults(func=_command("relevance", "cmd_sample"))


def _add_eval_and_use_commands(sub) -> None:
    """Evaluation, tiering, scoring, search and export."""
    ev = sub.add_parser("eval", help="evaluate a trained model")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    er = esub.add_parser("relevance", help="classification metrics of a relevance model (prefill argmax; --decode)")
    er.add_argument("--model", help="model directory (e.g. runs/sft/final); not with --cv")
    er.add_argument("--cv", type=int, default=0, metavar="K",
                    help="K-fold cross-validation over queries instead: train --config on each fold, test it and the "
                         "baselines on the same folds, report query-bootstrap 95%% intervals and paired differences")
    er.add_argument("--config", help="--cv: the SFT config (YAML) trained on each fold (default: SFTConfig's, the "
                    "default recipe)")
    er.add_argument("--seeds", default="0", help="--cv: comma-separated training seeds (default 0)")
    er.add_argument("--folds", help="--cv: comma-separated folds to run (default all); the others are not tested")
    er.add_argument("--out", default="runs/cv", help="--cv: run directory (folds resume when re-run)")
    er.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="--cv: override an SFT config field")
    er.add_argument("--data", required=True)
    er.add_argument("--split", default="test", choices=["train", "valid", "test"])
    er.add_argument("--decode", action="store_true", help="also decode the CoT (under the completion grammar) and "
                    "measure it: parse rate, step agreement, self-consistency (with --cv: on every fold)")
    er.add_argument("--batch-size", type=int, default=16)
    er.add_argument("--json", help="write metrics JSON here")
    er.set_defaults(func=_command("relevance", "cmd_eval_relevance"))
    erv = esub.add_parser("retrieval", help="a retriever over the catalogue: hitrate, nDCG, goodrate, BM25 overlap, quality")
    erv.add_argument("--retriever", required=True, help="encoder directory (a stage's final/, or all-MiniLM-L6-v2)")
    erv.add_argument("--data", required=True)
    erv.add_argument("--split", default="test", choices=["train", "valid", "test"])
    erv.add_argument("--k", default="10,100", help="cut-offs, comma-separated (default 10,100; 10 always added)")
    erv.add_argument("--relevance-model", help="relevance model directory: adds goodrate@K (scorer's tiered grade)")
    erv.add_argument("--goodrate-k", type=int, default=10, help="K of goodrate (default 10)")
    erv.add_argument("--index", choices=["flat", "ivf", "hnsw"], help="index kind (default: the training config's)")
    erv.add_argument("--max-products", type=int, default=0,
                     help="search a seeded subset of this many products that keeps every judged one, as training's "
                          "max_products (seed 0); default 0 = the whole catalogue")
    erv.add_argument("--name", help="system name in the table (default: the retriever path)")
    erv.add_argument("--json", help="write metrics JSON here")
    erv.set_defaults(func=_command("retrieval", "cmd_eval_retrieval"))
    tt = sub.add_parser("tune-tiering", help="fit the cumulative-probability threshold beta on a split; store it")
    tt.add_argument("--model", required=True, help="model directory (its relevance_config.json is updated)")
    tt.add_argument("--data", required=True)
    tt.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    tt.add_argument("--batch-size", type=int, default=32)
    tt.set_defaults(func=_command("relevance", "cmd_tune_tiering"))
    sc = sub.add_parser("score", help="grade (query, product) pairs from a file: probabilities, grade, tier, P(Good)")
    sc.add_argument("--model", required=True, help="model directory")
    sc.add_argument("--input", required=True, help="JSONL/CSV/TSV/Parquet with query, title, product_id, ...")
    sc.add_argument("--output", required=True, help="output .jsonl/.csv/.tsv/.parquet")
    sc.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (default 32)")
    sc.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                    help="bad rows: stop naming file/line/field (default), or skip and count them")
    sc.set_defaults(func=_command("relevance", "cmd_score"))
    se = sub.add_parser("search", help="top-k products for a query from a trained retriever (optionally re-graded)")
    se.add_argument("query")
    se.add_argument("--retriever", required=True, help="encoder directory (a retriever stage's final/)")
    se.add_argument("--data", help="prepared dataset (default: the data_dir the retriever was trained on)")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--relevance-model", help="relevance model directory: add P(Good) and the tiered grade")
    se.add_argument("--route", choices=["hybrid", "dense", "bm25"], default="hybrid",
                    help="hybrid (BM25 and the retriever fused; default), dense (the retriever alone) or bm25")
    se.set_defaults(func=_command("retrieval", "cmd_search"))
    ex = sub.add_parser("export", help="a deployable copy of a model: safetensors, tokenizer, scorer config")
    ex.add_argument("--model", required=True)
    ex.add_argument("--output", required=True)
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=_command("relevance", "cmd_export"))


def _add_serving_and_tools(sub) -> None:
    """The HTTP service, the teacher's checks, plots and the cheap baselines."""
    sv = sub.add_parser("serve", help="HTTP service (FastAPI): POST /v1/relevance/score, /v1/search, GET /healthz")
    sv.add_argument("--model", required=True, help="relevance model directory (also re-grades /v1/search)")
    sv.add_argument("--retriever", help="encoder directory: also serve POST /v1/search over its catalogue")
    sv.add_argument("--data", help="dataset for --retriever (default: the data_dir it was trained on)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--config", help="YAML with fields of searchrl.serve.server.ServerConfig (limits, batching)")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ServerConfig field")
    sv.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sv.set_defaults(func=_command("run", "cmd_serve"))
    te = sub.add_parser("teacher", help="the CoT teacher and its rule knowledge base")
    tesub = te.add_subparsers(dest="teacher_command", required=True, metavar="SUBCOMMAND")
    ta = tesub.add_parser("agreement", help="rule grade vs human grade per split (macro-F1, confusion)")
    ta.add_argument("--data", required=True)
    ta.add_argument("--rules", default=None, help="rule YAML (default: the packaged relevance/rules.yaml)")
    ta.add_argument("--json", help="write metrics JSON here")
    ta.set_defaults(func=_command("relevance", "cmd_teacher_agreement"))
    pl = sub.add_parser("plot", help="learning curves (PNG) of runs' metrics.jsonl: one plot per metric, one line per run")
    pl.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                    help="a run directory (or metrics.jsonl) and its legend label; repeat per run")
    pl.add_argument("--key", action="append", required=True, help="metric to plot, e.g. reward_mean, valid_macro_f1")
    pl.add_argument("--out", required=True, help="directory for KEY.png")
    pl.add_argument("--smooth", type=int, default=1, help="trailing moving-average window for train metrics (1 = raw)")
    pl.add_argument("--title", help="plot title prefix")
    pl.set_defaults(func=_command("run", "cmd_plot"))
    base = sub.add_parser("baseline", help="cheap baselines: majority, BM25, zero-shot MiniLM")
    bsub = base.add_subparsers(dest="baseline_command", required=True, metavar="TASK")
    r = bsub.add_parser("relevance", help="majority, BM25 thresholds, lexical logistic regression")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="test", choices=["train", "valid", "test"])
    r.add_argument("--json", help="write metrics JSON here")
    r.set_defaults(func=_command("relevance", "cmd_baseline_relevance"))
    t = bsub.add_parser("retrieval", help="BM25 and zero-shot all-MiniLM-L6-v2 (FAISS flat) over the catalogue")
    t.add_argument("--data", required=True)
    t.add_argument("--split", default="test", choices=["train", "valid", "test"])
    t.add_argument("--k", default="10,100", help="cut-offs, comma-separated (default 10,100)")
    t.add_argument("--encoder", default=None, help="sentence-transformers model path (default all-MiniLM-L6-v2)")
    t.add_argument("--json", help="write metrics JSON here")
    t.set_defaults(func=_command("retrieval", "cmd_baseline_retrieval"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="searchrl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run_commands(sub)
    _add_data_commands(sub)
    _add_train_commands(sub)
    _add_eval_and_use_commands(sub)
    _add_serving_and_tools(sub)
    p.epilog = "commands:\n" + "\n".join(f"  searchrl {name:<22} {help_}" for name, help_ in _leaf_commands(sub))
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def _leaf_commands(action, prefix=""):
    """(full command, one-line help) for every runnable command, for the top-level --help."""
    helps = {a.dest: a.help for a in action._choices_actions}
    for name, parser in action.choices.items():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            yield from _leaf_commands(subs[0], f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", helps.get(name, "")


def main(argv: list[str] | None = None) -> int:
    """Run one command; a UserError (bad config, data, checksum, model) prints ``error: ...`` and returns 2.
    Anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what the run records as its command (pipeline.json, the report)
    from searchrl.errors import UserError
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
