"""The ``searchrl`` command line: one sub-command per stage, each a thin wrapper over a library call.

Commands import their heavy dependencies (torch, sentence-transformers) lazily so
that ``searchrl --help`` and the data commands start fast.
"""

from __future__ import annotations

import argparse
import os
import sys



def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"error: {flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


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


def cmd_data_prepare(a) -> None:
    from .data.prepare import prepare
    options = _kv(a.option, "--option")
    ds = prepare(a.name, a.out or f"data/{a.name}", a.mirror, seed=a.seed, fractions=a.fractions,
                 on_error=a.on_error, pins=_kv(a.pin, "--pin"), download=not a.no_download, **options)
    _print_report(ds, a.out or f"data/{a.name}")


def cmd_data_import(a) -> None:
    from .data.importer import import_dataset, parse_mapping
    mapping = parse_mapping(a.mapping, a.map, {"products": a.products, "queries": a.queries,
                                               "judgments": a.judgments}, a.labels)
    ds = import_dataset(mapping, a.out, name=a.name, seed=a.seed, fractions=a.fractions, on_error=a.on_error)
    _print_report(ds, a.out)


def _print_report(ds, out) -> None:
    from .data.prepare import stats_table
    print(f"wrote {out}")
    print(stats_table(ds))
    rep = ds.card["report"]
    if rep["skipped"]:
        print(f"skipped {sum(rep['skipped'].values())} bad row(s): {rep['skipped']}")
        for line in rep["skipped_examples"]:
            print(f"  {line}")
    if rep["merged_duplicate_judgments"]:
        print(f"merged {rep['merged_duplicate_judgments']} duplicate judgment(s) with equal grades")
    if rep["unjudged_queries_dropped"]:
        print(f"dropped {rep['unjudged_queries_dropped']} quer(ies) without judgments")


def cmd_data_stats(a) -> None:
    from .data.prepare import stats_table
    from .data.schema import load_dataset
    print(stats_table(load_dataset(a.dir)))


def cmd_baseline_relevance(a) -> None:
    from .data.schema import load_dataset
    from .eval.baselines import relevance_baselines
    from .eval.metrics import RELEVANCE_COLUMNS, print_table, write_metrics_json
    ds = load_dataset(a.data)
    rows = relevance_baselines(ds, a.split)
    print_table(rows, RELEVANCE_COLUMNS, title=f"relevance baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_baseline_retrieval(a) -> None:
    from .data.schema import load_dataset
    from .eval.baselines import retrieval_baselines
    from .eval.metrics import print_table, write_metrics_json
    ds = load_dataset(a.data)
    ks = tuple(int(k) for k in a.k.split(","))
    rows = retrieval_baselines(ds, a.split, ks, encoder=a.encoder)
    print_table(rows, title=f"retrieval baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_train_sft(a) -> None:
    from .config import load_config
    from .relevance.run_sft import run_sft
    from .relevance.sft import SFTConfig
    result = run_sft(load_config(SFTConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"sft: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_sample(a) -> None:
    import json
    from .data.schema import load_dataset
    from .relevance.sample import format_table, sample_preferences, write_pairs
    rows, table = sample_preferences(a.model, load_dataset(a.data), a.n, a.split, a.temperature, a.top_p,
                                     a.max_new_tokens, a.prompts_per_batch, a.seed, a.max_prompts, a.rules)
    write_pairs(a.out, rows)
    print(format_table(table))
    print(f"wrote {len(rows)} preference pairs -> {a.out}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(table, f, indent=2)


def cmd_train_dpo(a) -> None:
    from .config import load_config
    from .relevance.dpo import DPOConfig, train_dpo
    result = train_dpo(load_config(DPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"dpo: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_train_grpo(a) -> None:
    from .config import load_config
    from .relevance.grpo import GRPOConfig, train_grpo
    result = train_grpo(load_config(GRPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"grpo: saved {result.final_dir} after {result.step} steps ({result.rollouts} rollouts); "
              f"last eval {result.last_eval}")


def cmd_eval_relevance(a) -> None:
    from .data.schema import load_dataset
    from .eval.metrics import RELEVANCE_COLUMNS, print_table, write_metrics_json
    from .relevance.evaluate import evaluate_model
    ds = load_dataset(a.data)
    rows = evaluate_model(a.model, ds, a.split, decode=a.decode, batch_size=a.batch_size)
    extra = [k for k in rows[0] if k.startswith("x_")]
    print_table(rows, RELEVANCE_COLUMNS + extra, title=f"relevance: {a.model} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_tune_tiering(a) -> None:
    from .data.schema import load_dataset
    from .relevance.evaluate import tune_tiering
    r = tune_tiering(a.model, load_dataset(a.data), a.split, batch_size=a.batch_size)
    print(f"tiering on {r['split']} ({r['n']} pairs): beta={r['beta']:g} macro-F1 {r['macro_f1_tiered']:.4f}; "
          f"per-grade thresholds {r['grade_thresholds']} macro-F1 {r['macro_f1_thresholds']:.4f}; "
          f"argmax macro-F1 {r['macro_f1_argmax']:.4f}")
    print(f"stored in {a.model}/relevance_config.json")


def cmd_score(a) -> None:
    from .serve.scorer import score_file
    r = score_file(a.model, a.input, a.output, on_error=a.on_error, batch_size=a.batch_size)
    print(f"scored {r['pairs']} pairs of {r['queries']} queries in {r['seconds']:.1f}s "
          f"({r['pairs_per_s']:.1f} pairs/s, {r['threads']} threads) -> {a.output}")
    if r["skipped"]:
        print(f"skipped {r['skipped']} bad row(s): {r['skipped_by_reason']}")


def cmd_export(a) -> None:
    from .serve.export import export_model
    out = export_model(a.model, a.output, overwrite=a.overwrite)
    print(f"exported {a.model} -> {out} (safetensors, tokenizer, relevance_config.json)")


def cmd_serve(a) -> None:
    from .config import load_config
    from .serve.server import ServerConfig, serve
    serve(a.model, a.host, a.port, load_config(ServerConfig, a.config, a.set), threads=a.threads,
          retriever_dir=a.retriever, data_dir=a.data)


def cmd_teacher_agreement(a) -> None:
    from .data.schema import load_dataset
    from .eval.metrics import RELEVANCE_COLUMNS, print_table, write_metrics_json
    from .relevance.evaluate import rule_agreement
    from .relevance.rules import RuleEngine
    ds = load_dataset(a.data)
    rows = rule_agreement(ds, RuleEngine.from_yaml(a.rules))
    print_table(rows, RELEVANCE_COLUMNS, title="rule grade vs human grade")
    for r in rows:
        print(f"{r['system']} confusion (rows = human L1..L4, columns = rules L1..L4): {r['confusion']}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), "all", rows)


def cmd_train_retriever(a) -> None:
    from .config import load_config
    from .retrieval.config import RetrieverConfig
    cfg = load_config(RetrieverConfig, a.config, a.set + ([f"stage={a.stage}"] if a.stage else []))
    if cfg.stage == "rgrpo":
        from .retrieval.rgrpo import train_rgrpo
        step, final = train_rgrpo(cfg)
    else:
        from .retrieval.train_sft import train_contrastive
        step, final = train_contrastive(cfg)
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"retriever {cfg.stage}: saved {final} after {step} steps (metrics in {cfg.output_dir}/metrics.jsonl)")


def _relevance_scorer(model_dir):
    if not model_dir:
        return None
    from .serve.scorer import RelevanceScorer
    return RelevanceScorer.load(model_dir)


def cmd_eval_retrieval(a) -> None:
    from .data.schema import load_dataset
    from .eval.metrics import print_table, write_metrics_json
    from .retrieval.evaluate import Retriever, evaluate_retrieval
    from .retrieval.index import IndexConfig
    ds = load_dataset(a.data)
    retriever = Retriever(a.retriever, ds.products, IndexConfig(kind=a.index) if a.index else None)
    ks = tuple(int(k) for k in a.k.split(","))
    row = evaluate_retrieval(retriever, ds, a.split, ks, _relevance_scorer(a.relevance_model), a.goodrate_k,
                             system=a.name or os.path.normpath(a.retriever))
    print_table([row], title=f"retrieval: {a.retriever} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, [row])


def cmd_search(a) -> None:
    from .retrieval.evaluate import search
    for r in search(a.retriever, a.query, a.k, a.data, _relevance_scorer(a.relevance_model), progress=False):
        graded = f"  P(Good)={r['p_good']:.3f} L{r['grade']}" if "p_good" in r else ""
        print(f"{r['rank']:>3}. {r['score']:.4f}  {r['product_id']}  {r['title']} [{r['brand']}]{graded}")


def cmd_quickstart(a) -> None:
    from .quickstart import run_quickstart
    run_quickstart(a.out, mirror=a.mirror, sft_overrides=a.set)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="searchrl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="the main job on embedded defaults: prepare Chorus, baselines, SFT, tables")
    q.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    q.add_argument("--mirror", default=None, help="local mirror of upstream data files ($SEARCHRL_DATA_MIRROR)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the SFT config (searchrl/configs/sft_chorus.yaml)")
    q.set_defaults(func=cmd_quickstart)

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
    d.set_defaults(func=cmd_data_prepare)

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
    i.set_defaults(func=cmd_data_import)

    s = dsub.add_parser("stats", help="counts, grade distribution per split, judgments per query")
    s.add_argument("dir")
    s.set_defaults(func=cmd_data_stats)

    train = sub.add_parser("train", help="train a model")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="STAGE")
    ts = tsub.add_parser("sft", help="label-first CoT SFT of the relevance LLM on rule-teacher completions")
    ts.add_argument("--config", help="YAML config (fields of searchrl.relevance.sft.SFTConfig)")
    ts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ts.set_defaults(func=cmd_train_sft)
    td = tsub.add_parser("dpo", help="DPO of the SFT model on preference pairs (from `searchrl sample`)")
    td.add_argument("--config", help="YAML config (fields of searchrl.relevance.dpo.DPOConfig)")
    td.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    td.set_defaults(func=cmd_train_dpo)
    tg = tsub.add_parser("grpo", help="GRPO of the SFT model: grade reward, dynamic sampling, class-balanced prompts")
    tg.add_argument("--config", help="YAML config (fields of searchrl.relevance.grpo.GRPOConfig)")
    tg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    tg.set_defaults(func=cmd_train_grpo)
    trr = tsub.add_parser("retriever", help="dense retriever: sft (InfoNCE), hardneg (mined negatives) or rgrpo")
    trr.add_argument("--stage", choices=["sft", "hardneg", "rgrpo"], help="overrides the config's stage")
    trr.add_argument("--config", help="YAML config (fields of searchrl.retrieval.config.RetrieverConfig)")
    trr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    trr.set_defaults(func=cmd_train_retriever)

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
    sp.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="evaluate a trained model")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    er = esub.add_parser("relevance", help="classification metrics of a relevance model (prefill argmax; --decode)")
    er.add_argument("--model", required=True, help="model directory (e.g. runs/sft/final)")
    er.add_argument("--data", required=True)
    er.add_argument("--split", default="test", choices=["train", "valid", "test"])
    er.add_argument("--decode", action="store_true", help="also generate and parse the CoT: format errors, rule adherence")
    er.add_argument("--batch-size", type=int, default=16)
    er.add_argument("--json", help="write metrics JSON here")
    er.set_defaults(func=cmd_eval_relevance)
    erv = esub.add_parser("retrieval", help="a retriever over the catalogue: hitrate, nDCG, goodrate, BM25 overlap, quality")
    erv.add_argument("--retriever", required=True, help="encoder directory (a stage's final/, or all-MiniLM-L6-v2)")
    erv.add_argument("--data", required=True)
    erv.add_argument("--split", default="test", choices=["train", "valid", "test"])
    erv.add_argument("--k", default="10,100", help="cut-offs, comma-separated (default 10,100; 10 always added)")
    erv.add_argument("--relevance-model", help="relevance model directory: adds goodrate@K (scorer's tiered grade)")
    erv.add_argument("--goodrate-k", type=int, default=10, help="K of goodrate (default 10)")
    erv.add_argument("--index", choices=["flat", "ivf", "hnsw"], help="index kind (default: the training config's)")
    erv.add_argument("--name", help="system name in the table (default: the retriever path)")
    erv.add_argument("--json", help="write metrics JSON here")
    erv.set_defaults(func=cmd_eval_retrieval)

    tt = sub.add_parser("tune-tiering", help="fit the cumulative-probability threshold beta on a split; store it")
    tt.add_argument("--model", required=True, help="model directory (its relevance_config.json is updated)")
    tt.add_argument("--data", required=True)
    tt.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    tt.add_argument("--batch-size", type=int, default=32)
    tt.set_defaults(func=cmd_tune_tiering)

    sc = sub.add_parser("score", help="grade (query, product) pairs from a file: probabilities, grade, tier, P(Good)")
    sc.add_argument("--model", required=True, help="model directory")
    sc.add_argument("--input", required=True, help="JSONL/CSV/TSV/Parquet with query, title, product_id, ...")
    sc.add_argument("--output", required=True, help="output .jsonl/.csv/.tsv/.parquet")
    sc.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (default 32)")
    sc.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                    help="bad rows: stop naming file/line/field (default), or skip and count them")
    sc.set_defaults(func=cmd_score)

    se = sub.add_parser("search", help="top-k products for a query from a trained retriever (optionally re-graded)")
    se.add_argument("query")
    se.add_argument("--retriever", required=True, help="encoder directory (a retriever stage's final/)")
    se.add_argument("--data", help="prepared dataset (default: the data_dir the retriever was trained on)")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--relevance-model", help="relevance model directory: add P(Good) and the tiered grade")
    se.set_defaults(func=cmd_search)

    ex = sub.add_parser("export", help="a deployable copy of a model: safetensors, tokenizer, scorer config")
    ex.add_argument("--model", required=True)
    ex.add_argument("--output", required=True)
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="HTTP service (FastAPI): POST /v1/relevance/score, /v1/search, GET /healthz")
    sv.add_argument("--model", required=True, help="relevance model directory (also re-grades /v1/search)")
    sv.add_argument("--retriever", help="encoder directory: also serve POST /v1/search over its catalogue")
    sv.add_argument("--data", help="dataset for --retriever (default: the data_dir it was trained on)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--config", help="YAML with fields of searchrl.serve.server.ServerConfig (limits, batching)")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ServerConfig field")
    sv.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sv.set_defaults(func=cmd_serve)

    te = sub.add_parser("teacher", help="the CoT teacher and its rule knowledge base")
    tesub = te.add_subparsers(dest="teacher_command", required=True, metavar="SUBCOMMAND")
    ta = tesub.add_parser("agreement", help="rule grade vs human grade per split (macro-F1, confusion)")
    ta.add_argument("--data", required=True)
    ta.add_argument("--rules", default=None, help="rule YAML (default: the packaged relevance/rules.yaml)")
    ta.add_argument("--json", help="write metrics JSON here")
    ta.set_defaults(func=cmd_teacher_agreement)

    base = sub.add_parser("baseline", help="cheap baselines: majority, BM25, zero-shot MiniLM")
    bsub = base.add_subparsers(dest="baseline_command", required=True, metavar="TASK")
    r = bsub.add_parser("relevance", help="majority, BM25 thresholds, lexical logistic regression")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="test", choices=["train", "valid", "test"])
    r.add_argument("--json", help="write metrics JSON here")
    r.set_defaults(func=cmd_baseline_relevance)
    t = bsub.add_parser("retrieval", help="BM25 and zero-shot all-MiniLM-L6-v2 (FAISS flat) over the catalogue")
    t.add_argument("--data", required=True)
    t.add_argument("--split", default="test", choices=["train", "valid", "test"])
    t.add_argument("--k", default="10,100", help="cut-offs, comma-separated (default 10,100)")
    t.add_argument("--encoder", default=None, help="sentence-transformers model path (default all-MiniLM-L6-v2)")
    t.add_argument("--json", help="write metrics JSON here")
    t.set_defaults(func=cmd_baseline_retrieval)
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
    args = build_parser().parse_args(argv)
    from .data.registry import ChecksumError
    from .data.schema import DataError
    try:
        args.func(args)
    except (DataError, ChecksumError, FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
