"""The experiments: each module measures one thing and says, at its top, what it measures, what it simplifies
and its wall time at its defaults. Run one from the repository root as ``python -m experiments.NAME``.

The claims (docs/results/claims.md, written by ``python -m experiments.claims``):
- rgrpo_judge_quality: Retrieval-GRPO's gain against the quality of its relevance judge; exclusivity on/off.
- relevance_rl_stages: SFT vs DPO vs GRPO, dynamic sampling, class balance and guided replay, with room to
  improve (SFT on half of each CV fold's train queries, RL on the other half), on held-out queries.
- label_vs_cot_first: label-first vs CoT-first SFT on CV folds, with each order's decoded reasoning measured.
- pass_at_n: pass@1..N of the reasoning samples and the DPO pairs they give (the default and the decoder).
- rule_shaping: rule-aware reward shaping against the outcome reward: rule adherence, step agreement,
  self-consistency and hallucination.

The relevance model and the retriever:
- default_model_cv: the default relevance model by 5-fold CV, with and without its rule teacher.
- reasoning_cv: the default's decoded reasoning on CV folds (parse rate, step agreement, self-consistency).
- cv_compare: CV runs merged into one table, paired against one system; cross-fitted stacks of scores.
- lexical_readout_bound: how far a lexical term in the relevance readout could go, bounded on the CV folds.
- sim_weight_shift: a similarity weight tuned on the valid fold (a negative result).
- grade_mix_import: the default on Chorus re-mixed to two thirds L4 and imported as a team's CSVs.
- rl_ablations_after_full_sft: the RL stages, shaping and replay from an SFT model trained on every label.
- retriever_reward_terms: the retriever's stages, each R-GRPO reward term removed, exclusivity at weight 1.
- hybrid_retrieval_cv: what each dense route adds to BM25 (hybrid, added recall, overlap) over all 135 queries
  by query CV on the whole catalogue; --choose-fusion picks the fusion default on valid queries
  (docs/results/hybrid.md, hybrid_fusion.md).

Shared: common (the pipeline's chain under a directory, child processes, CV lanes, tables, reports) and
rl_stage_tables (relevance_rl_stages' contrasts and tables). Every relevance model is trained through the
pipeline's own stage runner (searchrl.pipeline.run_pipeline); every claims section's last figures, and the run
they come from, are in last_run_claims.json.
"""
