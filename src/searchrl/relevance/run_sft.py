"""``searchrl train sft``: prepared dataset -> rule-teacher completions -> SFT -> saved model.

The rule teacher (or, with ``teacher: llm``, an LLM endpoint) writes the train split's completions (the human grade wins; see
teacher.py) and the eval split's prompts. Optionally, rule-graded pairs for queries written from the catalogue
are added (``synthetic_queries``; synthetic.py) and MiniLM's vocabulary is cut to what the data uses
(``trim_vocab``; model.trim_minilm_tokenizer). ``train_sft`` does the rest. The final
model directory gets ``relevance_config.json`` (the scorer config: prompt settings, beta) and
``teacher_report.json`` (how often the rules agreed with the human grade).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..data.schema import load_dataset
from .rules import RuleEngine
from .scorer_config import ScorerConfig, save_scorer_config
from .sft import SFTConfig, SFTResult, train_sft
from .llm_teacher import LLMTeacher
from .model import trim_minilm_tokenizer
from .prompt import build_prompt
from .synthetic import synthetic_pairs
from .teacher import RuleTeacher, build_sft_examples


def run_sft(cfg: SFTConfig) -> SFTResult:
    if not cfg.data_dir:
        raise ValueError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
    ds = load_dataset(cfg.data_dir)
    engine = RuleEngine.from_yaml(cfg.rules or None)
    teacher = RuleTeacher(engine, cfg.prompt, cfg.on_disagree)
    if cfg.teacher == "llm":  # the rule teacher stays as the fallback for unusable answers
        llm = cfg.llm if cfg.llm.cache_dir else dataclasses.replace(cfg.llm, cache_dir=f"{cfg.output_dir}/llm_cache")
        teacher = LLMTeacher(llm, cfg.prompt, fallback=teacher)  # answers cached: a rerun pays for no call twice
    train_ex, report = build_sft_examples(ds.split("train").pairs(), teacher, cfg.prompt)
    synthetic = synthetic_pairs(ds, engine, cfg.synthetic_queries, cfg.synthetic_per_query, seed=cfg.seed,
                                exclude_splits=tuple({"valid", "test", cfg.eval_split} - {"train"}),
                                progress=cfg.progress)
    # graded by the rules themselves, so the rule teacher always agrees; an LLM teacher is not paid for these
    syn_ex, _ = build_sft_examples(synthetic, RuleTeacher(engine, cfg.prompt, "condition"), cfg.prompt)
    # eval examples only need prompt and gold grade; never drop any of them
    eval_ex, _ = build_sft_examples(ds.split(cfg.eval_split).pairs(), RuleTeacher(engine, cfg.prompt, "condition"),
                                    cfg.prompt)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    train_cfg = cfg
    if cfg.trim_vocab:  # the catalogue as prompts render it, plus every train completion
        # each torchrun rank builds the same vocabulary (a pure function of the data) into its own directory
        tok_dir = Path(cfg.output_dir) / ("tokenizer" if rank0 else f"tokenizer-rank{os.environ['RANK']}")
        catalogue = (build_prompt("", p, cfg.prompt) for p in ds.products.to_dict("records"))
        tok = trim_minilm_tokenizer([*catalogue, *(ex["prompt"] + ex["completion"] for ex in train_ex + syn_ex)],
                                    tok_dir)
        if rank0:
            print(f"sft: vocabulary trimmed to {len(tok)} of MiniLM's tokens ({tok_dir})")
        train_cfg = dataclasses.replace(cfg, tokenizer=str(tok_dir), trim_vocab=False)
    if rank0:
        r = report.as_dict()
        print(f"sft: {len(train_ex)} train examples (teacher agreed {r['agreed']}, conditioned {r['conditioned']}, "
              f"dropped {r['dropped']}), {len(syn_ex)} rule-graded pairs for "
              f"{synthetic['query_id'].nunique() if len(synthetic) else 0} synthetic queries, "
              f"{len(eval_ex)} {cfg.eval_split} examples")
    result = train_sft(train_cfg, train_ex + syn_ex, eval_ex)
    if rank0 and result.final_dir is not None:
        save_scorer_config(result.final_dir, ScorerConfig(prompt=cfg.prompt, chat_template=cfg.chat_template))
        Path(result.final_dir, "teacher_report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        Path(result.final_dir, "sft_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return result
