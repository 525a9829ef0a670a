"""What each ``searchrl`` sub-command runs (cli.py parses the arguments): thin wrappers over library calls.

Commands import their heavy dependencies (torch, sentence-transformers) lazily so
that ``searchrl --help`` and the data commands start fast.
"""

from __future__ import annotations

import os

from searchrl.errors import ConfigError


def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def cmd_data_prepare(a) -> None:
    from searchrl.data.prepare import prepare
    options = _kv(a.option, "--option")
    ds = prepare(a.name, a.out or f"data/{a.name}", a.mirror, seed=a.seed, fractions=a.fractions,
                 on_error=a.on_error, pins=_kv(a.pin, "--pin"), download=not a.no_download, **options)
    _print_report(ds, a.out or f"data/{a.name}")


def cmd_data_import(a) -> None:
    from searchrl.data.importer import import_dataset, parse_mapping
    mapping = parse_mapping(a.mapping, a.map, {"products": a.products, "queries": a.queries,
                                               "judgments": a.judgments}, a.labels)
    ds = import_dataset(mapping, a.out, name=a.name, seed=a.seed, fractions=a.fractions, on_error=a.on_error)
    _print_report(ds, a.out)


def _print_report(ds, out) -> None:
    from searchrl.data.prepare import stats_table
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


def cmd_data_synthetic(a) -> None:
    from searchrl.data.prepare import stats_table
    from searchrl.data.schema import load_dataset, write_dataset
    from searchrl.relevance.rules.engine import RuleEngine
    from searchrl.relevance.rules.synthetic import synthetic_dataset
    if a.queries < 1 or a.per_query < 1:
        raise ConfigError(f"--queries and --per-query must be >= 1, got {a.queries}, {a.per_query}")
    ds = synthetic_dataset(load_dataset(a.data), RuleEngine.from_yaml(a.rules or None), a.queries, a.per_query,
                           a.seed, a.split)
    write_dataset(ds, a.out)
    print(f"wrote {a.out}")
    print(stats_table(ds))


def cmd_data_stats(a) -> None:
    from searchrl.data.prepare import stats_table
    from searchrl.data.schema import load_dataset
    print(stats_table(load_dataset(a.dir)))


def cmd_baseline_relevance(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.eval.baselines import relevance_baselines
    from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table, write_metrics_json
    ds = load_dataset(a.data)
    rows = relevance_baselines(ds, a.split)
    print_table(rows, RELEVANCE_COLUMNS, title=f"relevance baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_baseline_retrieval(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.eval.baselines import retrieval_baselines
    from searchrl.metrics.measures import print_table, write_metrics_json
    ds = load_dataset(a.data)
    ks = tuple(int(k) for k in a.k.split(","))
    rows = retrieval_baselines(ds, a.split, ks, encoder=a.encoder)
    print_table(rows, title=f"retrieval baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_train_sft(a) -> None:
    from searchrl.config import load_config
    from searchrl.relevance.train.sft import SFTConfig, run_sft
    # no --config (or "default"): SFTConfig's defaults, the default relevance model's recipe
    cfg = load_config(SFTConfig, None if a.config == "default" else a.config, a.set)
    result = run_sft(cfg)
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"sft: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_sample(a) -> None:
    import json

    from searchrl.data.schema import load_dataset
    from searchrl.relevance.train.sample import format_table, sample_preferences, write_pairs
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
    from searchrl.config import load_config
    from searchrl.relevance.train.dpo import DPOConfig, train_dpo
    result = train_dpo(load_config(DPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"dpo: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_train_grpo(a) -> None:
    from searchrl.config import load_config
    from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
    result = train_grpo(load_config(GRPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"grpo: saved {result.final_dir} after {result.step} steps ({result.rollouts} rollouts); "
              f"last eval {result.last_eval}")


def cmd_eval_relevance(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table, write_metrics_json
    from searchrl.relevance.scoring.evaluate import evaluate_model
    if a.cv:
        return _crossval(a)
    if not a.model:
        raise ConfigError("eval relevance needs --model DIR (or --cv K --config SFT.yaml)")
    ds = load_dataset(a.data)
    rows = evaluate_model(a.model, ds, a.split, decode=a.decode, batch_size=a.batch_size)
    extra = [k for k in rows[0] if k.startswith("x_")]
    print_table(rows, RELEVANCE_COLUMNS + extra, title=f"relevance: {a.model} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_tune_tiering(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.relevance.scoring.evaluate import tune_tiering
    r = tune_tiering(a.model, load_dataset(a.data), a.split, batch_size=a.batch_size)
    print(f"tiering on {r['split']} ({r['n']} pairs): beta={r['beta']:g} macro-F1 {r['macro_f1_tiered']:.4f}; "
          f"per-grade thresholds {r['grade_thresholds']} macro-F1 {r['macro_f1_thresholds']:.4f}; "
          f"argmax macro-F1 {r['macro_f1_argmax']:.4f}")
    print(f"stored in {a.model}/relevance_config.json")


def cmd_score(a) -> None:
    from searchrl.relevance.scoring.scorer import score_file
    r = score_file(a.model, a.input, a.output, on_error=a.on_error, batch_size=a.batch_size)
    print(f"scored {r['pairs']} pairs of {r['queries']} queries in {r['seconds']:.1f}s "
          f"({r['pairs_per_s']:.1f} pairs/s, {r['threads']} threads) -> {a.output}")
    if r["skipped"]:
        print(f"skipped {r['skipped']} bad row(s): {r['skipped_by_reason']}")


def cmd_export(a) -> None:
    from searchrl.relevance.scoring.export import export_model
    out = export_model(a.model, a.output, overwrite=a.overwrite)
    print(f"exported {a.model} -> {out} (safetensors, tokenizer, relevance_config.json)")


def cmd_serve(a) -> None:
    from searchrl.config import load_config
    from searchrl.serve.server import ServerConfig, serve
    serve(a.model, a.host, a.port, load_config(ServerConfig, a.config, a.set), threads=a.threads,
          retriever_dir=a.retriever, data_dir=a.data)


def cmd_teacher_agreement(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table, write_metrics_json
    from searchrl.relevance.scoring.evaluate import rule_agreement
    from searchrl.relevance.rules.engine import RuleEngine
    ds = load_dataset(a.data)
    rows = rule_agreement(ds, RuleEngine.from_yaml(a.rules))
    print_table(rows, RELEVANCE_COLUMNS, title="rule grade vs human grade")
    for r in rows:
        print(f"{r['system']} confusion (rows = human L1..L4, columns = rules L1..L4): {r['confusion']}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), "all", rows)


def cmd_train_retriever(a) -> None:
    from searchrl.config import load_config
    from searchrl.retrieval.config import RetrieverConfig
    if a.stage == "all":
        return _retriever_stages(a)
    cfg = load_config(RetrieverConfig, a.config, a.set + ([f"stage={a.stage}"] if a.stage else []))
    if cfg.stage == "rgrpo":
        from searchrl.retrieval.rgrpo import train_rgrpo
        step, final = train_rgrpo(cfg)
    else:
        from searchrl.retrieval.train_sft import train_contrastive
        step, final = train_contrastive(cfg)
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"retriever {cfg.stage}: saved {final} after {step} steps (metrics in {cfg.run.output_dir}/metrics.jsonl)")


def _retriever_stages(a) -> None:
    from searchrl.config import load_config
    from searchrl.data.schema import load_dataset
    from searchrl.metrics.measures import print_table, write_metrics_json
    from searchrl.retrieval.config import RetrieverConfig
    from searchrl.retrieval.chain import run_retriever_stages
    cfg = load_config(RetrieverConfig, a.config, a.set)
    out = a.out or cfg.run.output_dir
    ds = load_dataset(cfg.data_dir)
    rows = run_retriever_stages(cfg, ds, out, a.split, a.relevance_model, ablations=a.ablations)
    print_table(rows, title=f"retriever stages on {a.split}, {cfg.max_products or 'all'} products")
    write_metrics_json(os.path.join(out, "retrieval.json"), "retrieval", ds.card.get("name", cfg.data_dir), a.split, rows)


def _relevance_scorer(model_dir):
    if not model_dir:
        return None
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    return RelevanceScorer.load(model_dir)


def cmd_eval_retrieval(a) -> None:
    from searchrl.data.schema import load_dataset
    from searchrl.metrics.measures import print_table, write_metrics_json
    from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
    from searchrl.retrieval.index import IndexConfig
    from searchrl.retrieval.chain import catalogue_subset
    ds = catalogue_subset(load_dataset(a.data), a.max_products)  # 0 = the whole catalogue
    retriever = Retriever(a.retriever, ds.products, IndexConfig(kind=a.index) if a.index else None)
    ks = tuple(int(k) for k in a.k.split(","))
    row = evaluate_retrieval(retriever, ds, a.split, ks, _relevance_scorer(a.relevance_model), a.goodrate_k,
                             system=a.name or os.path.normpath(a.retriever))
    print_table([row], title=f"retrieval: {a.retriever} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, [row])


def cmd_search(a) -> None:
    from searchrl.retrieval.evaluate import search
    for r in search(a.retriever, a.query, a.k, a.data, _relevance_scorer(a.relevance_model), progress=False):
        graded = f"  P(Good)={r['p_good']:.3f} L{r['grade']}" if "p_good" in r else ""
        print(f"{r['rank']:>3}. {r['score']:.4f}  {r['product_id']}  {r['title']} [{r['brand']}]{graded}")


def cmd_plot(a) -> None:
    from searchrl.eval.plot import parse_run_args, plot_runs
    for path in plot_runs(parse_run_args(a.run), a.key, a.out, a.smooth, a.title):
        print(path)


def cmd_quickstart(a) -> None:
    """`searchrl quickstart` = `searchrl pipeline --config quickstart --dataset chorus --out runs/quickstart`."""
    import shlex
    from searchrl.pipeline import load_pipeline_config, run_pipeline
    cfg = load_pipeline_config("quickstart", ["data.dataset=chorus", "data.data_dir="]
                               + ([f"data.mirror={a.mirror}"] if a.mirror else []) + list(a.set))
    run_pipeline(cfg, a.out, command="searchrl " + shlex.join(a.argv))


def cmd_pipeline(a) -> None:
    import shlex
    from searchrl.pipeline import load_pipeline_config, run_pipeline
    overrides = list(a.set)
    if a.data:
        overrides.append(f"data.data_dir={a.data}")
    if a.dataset:
        overrides += [f"data.dataset={a.dataset}", "data.data_dir="]
    if a.mirror:
        overrides.append(f"data.mirror={a.mirror}")
    cfg = load_pipeline_config(a.config, overrides)
    run_pipeline(cfg, a.out, stages=a.stages.split(",") if a.stages else None, until=a.until, dry_run=a.dry_run,
                 command="searchrl " + shlex.join(a.argv))


def _crossval(a) -> None:
    from searchrl.config import load_config
    from searchrl.data.schema import load_dataset
    from searchrl.metrics.measures import print_table, write_metrics_json
    from searchrl.eval.crossval import crossval, summarize
    from searchrl.relevance.train.sft import SFTConfig
    if not a.config:
        raise ConfigError("--cv needs --config SFT.yaml: the recipe trained on every fold")
    cfg = load_config(SFTConfig, a.config, a.set + ["run.progress=false"])
    ds = load_dataset(a.data)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    folds = [int(f) for f in a.folds.split(",") if f.strip()] if a.folds else None
    result = crossval(cfg, ds, a.cv, seeds, a.out, folds_to_run=folds)
    rows = summarize(result, reference="model")
    shown = [{**{k: v for k, v in r.items() if not k.startswith("x_") or k == "x_good_auc_per_query"},
              **{f"{m} 95%": f"[{lo:.3f}, {hi:.3f}]" for m, (lo, hi) in r.get("x_ci", {}).items()},
              **({"AUC diff (model - this)": "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["x_auc_diff_vs_ref"])}
                 if "x_auc_diff_vs_ref" in r else {})} for r in rows]
    print_table(shown, title=f"{a.cv}-fold cross-validation over {rows[0]['x_queries']} queries, seeds {seeds}")
    write_metrics_json(os.path.join(a.out, "crossval_summary.json"), "relevance", ds.card.get("name", str(a.data)),
                       f"cv{a.cv}", rows)
