"""Stage 1: supervised fine-tuning of the relevance model on teacher completions (``searchrl train sft``).

Data (:func:`run_sft`): the rule teacher (or, with ``teacher: llm``, an LLM endpoint)
writes the train split's completions, the human grade winning (teacher.py); optionally
rule-graded pairs for queries written from the catalogue are added (``synthetic_queries``;
synthetic.py) and MiniLM's vocabulary is cut to what the data uses (``trim_vocab``). The
final model directory gets ``relevance_config.json`` (the scorer config), the teacher's
report and the run's config.

The step (:func:`train_sft`): causal-LM cross-entropy on the completion tokens only
(grade token + reasoning + EOS; prompt and padding carry label IGNORE), the grade
token weighted (``label_loss_weight``, ``balance_grades``), gradient accumulation with
the loss averaged over every completion token of the optimizer step. The run loop
(training.RunLoop) does the rest: seeding, torchrun, checkpoints, exact resume (the data
order is a pure function of (seed, epoch), so the step number says where the stream
stands), logging, eval cadence and final/.

Under torchrun rank r takes micro-batches r, r + W, ... of the same ordered stream and
the loss is normalised by the global token count, so W processes with grad_accum A
match one process with grad_accum A * W.

Simplifies: examples longer than max_length are dropped and counted, not truncated; no
sequence packing; FSDP / DeepSpeed are left to accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from searchrl.config import EvalConfig, OptimConfig, RunConfig, check_choices, when_set
from searchrl.errors import ConfigError, InputError
from searchrl.relevance.format.prompt import PromptConfig, build_prompt, grade_token
from searchrl.relevance.model.builds import TinyModel
from searchrl.relevance.model.load import DTYPES, MINILM_BUILDS, PrefixLMSettings, load_trainable
from searchrl.relevance.model.lora import LoraSettings, freeze_lower_layers
from searchrl.relevance.model.prefix_lm import MINILM_PREFIX
from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
from searchrl.relevance.model.tokenizer import grade_token_ids, render_prompt, trim_minilm_tokenizer
from searchrl.relevance.rules.llm_teacher import LLMTeacherConfig
from searchrl.relevance.scoring.evaluate import evaluate_examples
from searchrl.relevance.train.examples import (
    IGNORE,
    build_examples,
    check_order,
    collate,
    encode_example,
    split_examples,
    subset,
)
from searchrl.relevance.train.guided_replay import hint_text, hinted_prompt
from searchrl.relevance.train.saving import PolicySaver
from searchrl.training import BatchStream, RunLoop, build_optimizer, optimizer_step, total_steps

# config fields only decoding reads (the type slugs, the grammar): SFT trains the same weights under any of them,
# so a run may resume, and a CV fold keep its model, when these alone changed
DECODE_ONLY = ("prompt.slugs", "prompt.constrained", "prompt.intent_beam")


@dataclass
class SFTConfig:
    """Label-first CoT SFT. The defaults are the default relevance model's recipe on 2 CPU cores
    (configs/sft_chorus.yaml holds the same values with the reason for each)."""
    # --- model
    model: str = "minilm-prefix"  # local HF causal-LM directory, a GGUF file, a packaged GGUF model ("smollm2-135m",
    #   "gemma3-270m": relevance/pretrained.py; dequantised once, cached), or an offline build over MiniLM's vocabulary:
    #   "tiny-qwen2" (random Qwen2), "minilm-qwen2" (Qwen2 with MiniLM's embeddings), "minilm-decoder" (MiniLM as
    #   a BERT decoder)
    #   | "minilm-prefix" (MiniLM as a prefix-LM reading the query and the product as segments; prefix_lm.py)
    tiny: TinyModel = field(default_factory=TinyModel)  # Qwen2 sizes for tiny-qwen2 / minilm-qwen2
    prefix: PrefixLMSettings = field(default_factory=lambda: PrefixLMSettings(
        mask="block", readout="sim", cot_layers=2, cot_copy=True, cot_grade=True))
    #   minilm-prefix: the product segment reads the query (a cross-encoder), + w * cosine in the grade logits;
    #   the CoT is written by completion adapters with a copy term, conditioned on the grade token it follows
    tokenizer: str = ""  # tokenizer directory; "" = the model's own (MiniLM's for tiny-qwen2)
    trim_vocab: bool = True  # MiniLM builds only: cut MiniLM's 30k-token vocabulary to the tokens the catalogue and
    #   the train completions use (model.trim_minilm_tokenizer): a ~4x smaller LM head
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype (optimizer states follow it)
    lora: LoraSettings | None = None  # None = full fine-tuning; set any lora.* key to train LoRA adapters instead
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    freeze_layers: int = 6  # freeze the input embeddings and this many lower transformer blocks (0 = train all):
    #   with ~100 training queries a pretrained encoder keeps what it knows instead of memorising them
    head_lr: float = 1e-3  # learning rate of the parameters outside the base model (LM-head transform, grade rows,
    #   similarity weights): new parameters learn faster than pretrained ones; 0 = optim.lr
    # --- data
    data_dir: str = ""  # prepared dataset directory (run_sft builds the examples from it)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(
        order="label_first", layout="segments", max_description_chars=120, max_attributes=2, max_note_chars=0))
    #   prompt fields, instruction and completion order
    #   (prompt.order: label_first = grade token first | cot_first); saved with the model
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    rules: str = ""  # rule knowledge base YAML for the rule teacher; "" = the packaged relevance/rules.yaml
    teacher: str = "rule"  # who writes the train CoT: "rule" (offline) | "llm" (an OpenAI-compatible endpoint)
    llm: LLMTeacherConfig = field(default_factory=LLMTeacherConfig)  # endpoint, model, cache (teacher=llm)
    on_disagree: str = "condition"  # teacher grade != human grade: "condition" the CoT on the gold grade | "drop"
    max_length: int = 256  # prompt + completion tokens; longer examples are dropped and counted
    synthetic_queries: int = 0  # add rule-graded pairs for this many queries written from the catalogue
    #   (relevance/synthetic.py; never a valid/test query or a product judged for them); 0 = human pairs only
    synthetic_per_query: int = 8  # candidates per synthetic query: BM25 hits, a quarter random products
    synthetic_cot_only: bool = when_set(False)  # the synthetic pairs teach the chain of thought alone: each keeps its
    #   CoT, its grade token carries no loss and it is in no ranking pair, so rule grades never move the grade path
    max_train_examples: int = 0  # train on a seeded random subset of this size; 0 = all
    # --- batches and loss
    batch_size: int = 32  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum)
    group_by_length: bool = False  # batches of similar-length examples (training.BatchStream): less padding
    label_loss_weight: float = 5.0  # loss weight of grade-token targets relative to a reasoning token: the grade
    #   is one token among ~50, and a small model otherwise learns the reasoning text long before the grade
    balance_grades: float = 0.5  # 0..1: scale each grade token's weight by (inverse train frequency of that
    #   grade) ** balance_grades, normalised to mean 1 over examples; 1 = fully class-balanced (macro-F1 view)
    cot_fraction: float = 0.25  # share of the training examples that keep their chain of thought (seeded); the others
    #   are trained on the grade token alone: the model still writes its CoT, and an epoch costs far fewer tokens
    hint_fraction: float = 0.0  # share of the training examples whose prompt carries guided replay's hint (the
    #   gold grade and the rule verdicts, guided_replay.hint_text) as the replay will give it: a policy that has
    #   read hints in SFT can use them in AGRL's guided rollouts; serving prompts never carry one
    rank_loss_weight: float = 1.0  # + this x a within-query pairwise (RankNet) loss on the Good log-odds
    #   log P(L3|L4) - log P(L1|L2) of candidates with different grades: forces ranking inside a query
    query_chunk: int = 16  # > 0: batches are made of chunks of this many candidates of one query (what the rank
    #   loss needs); 0 = examples in random (or length-grouped) order
    # --- sections
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, epochs=2.0, warmup_ratio=0.06, schedule="linear"))
    #   (full fine-tuning of a pretrained model wants lr ~1e-5, LoRA ~1e-4)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(split="valid", every=0, max_examples=0))
    #   in-training eval on eval.split (macro-F1, accuracy)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft", save_every=50, save_total_limit=1,
                                                             resume=True))  # output, cadence, resume

    def __post_init__(self):
        check_choices(self, teacher=("rule", "llm"), on_disagree=("condition", "drop"), dtype=DTYPES)
        if self.trim_vocab and (self.model not in MINILM_BUILDS or self.tokenizer):
            raise ConfigError(f"trim_vocab builds the tokenizer of a new {' / '.join(MINILM_BUILDS)} model; "
                              f"it cannot be used with model={self.model!r}, tokenizer={self.tokenizer!r}")
        if self.synthetic_queries < 0 or self.synthetic_per_query < 1:
            raise ConfigError(f"synthetic_queries must be >= 0 and synthetic_per_query >= 1, got "
                              f"{self.synthetic_queries}, {self.synthetic_per_query}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if (self.model == MINILM_PREFIX) != (self.prompt.layout == "segments"):
            raise ConfigError(f"model {self.model!r} with prompt.layout {self.prompt.layout!r}: the minilm-prefix "
                              "model reads the segments layout, and the segments layout is for it alone")
        if not 0.0 <= self.cot_fraction <= 1.0 or (self.cot_fraction < 1 and self.prompt.order != "label_first"):
            raise ConfigError(f"cot_fraction must be in [0, 1] (and 1 unless prompt.order is label_first), got "
                              f"{self.cot_fraction}")
        if not 0.0 <= self.hint_fraction < 1.0:
            raise ConfigError(f"hint_fraction must be in [0, 1), got {self.hint_fraction}")
        if self.rank_loss_weight and not self.query_chunk:
            raise ConfigError("rank_loss_weight > 0 needs query_chunk > 0 (candidates of one query in a batch)")


@dataclass
class SFTResult:
    model: object  # the trained model (LoRA merged into it once training has finished)
    tokenizer: object
    step: int  # optimizer steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    dropped_too_long: int  # training examples over max_length
    last_eval: dict  # the last eval metrics ({} when there was no eval)


# ---------------------------------------------------------------- loss

def grade_weights(grades: list[int], label_loss_weight: float, balance: float) -> list[float]:
    """Loss weight of each grade token L1..L4: label_loss_weight x (inverse frequency ** balance), mean 1 over
    examples; a grade absent from training keeps weight label_loss_weight."""
    counts = np.bincount(np.asarray(grades, dtype=int) - 1, minlength=4).astype(float)  # [4]
    inv = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** balance, 0.0)
    norm = (inv * counts).sum() / counts.sum() if counts.sum() else 1.0
    return [float(label_loss_weight * (v / norm if v else 1.0)) for v in inv]


def target_weights(labels: torch.Tensor, grade_ids: list[int], weights: list[float]) -> torch.Tensor:
    """[B, T] loss weight per target: 0 on IGNORE, ``weights[g]`` on grade token g, 1 elsewhere."""
    w = (labels != IGNORE).float()  # [B, T]
    for gid, gw in zip(grade_ids, weights):
        if gw != 1.0:
            w = torch.where(labels == gid, w * gw, w)
    return w


def completion_loss(model, batch: dict, grade_ids: list[int] | None = None):
    """(summed, weighted cross-entropy over completion tokens, their count) for one right-padded batch; with
    ``grade_ids`` also [B, 4] the logits of <L1>..<L4> at each row's first completion position."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [B, T] each
    width = ids.shape[1]
    # only positions from the earliest completion start on need logits (saves [B, T, V] memory on long prompts)
    first = int((labels != IGNORE).float().argmax(1).min())
    keep = width - max(first - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # [B, keep, V]
    targets = labels[:, width - keep + 1:]  # [B, keep-1]: token t+1 is predicted at position t
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                         reduction="none")  # [B * (keep-1)]
    if "weights" in batch:
        ce = ce * batch["weights"][:, width - keep + 1:].flatten()
    if grade_ids is None:
        return ce.sum(), int((targets != IGNORE).sum())
    start = (labels != IGNORE).float().argmax(1) - 1 - (width - keep)  # [B]: kept index predicting the grade
    grade_logits = logits[torch.arange(len(ids)), start][:, grade_ids].float()  # [B, 4]
    return ce.sum(), int((targets != IGNORE).sum()), grade_logits


def rank_loss(grade_logits: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RankNet on the Good log-odds s = logsumexp(l3, l4) - logsumexp(l1, l2): mean softplus(s_j - s_i) over
    the pairs (i, j) of one query (same group) with grade_i > grade_j; 0 when the batch has none."""
    s = torch.logsumexp(grade_logits[:, 2:], -1) - torch.logsumexp(grade_logits[:, :2], -1)  # [B]
    pairs = (groups[:, None] == groups[None, :]) & (grades[:, None] > grades[None, :])  # [B, B]
    if not bool(pairs.any()):
        return s.sum() * 0.0
    return F.softplus(-(s[:, None] - s[None, :])[pairs]).mean()


def query_chunks(examples: list[dict], size: int, seed: int) -> list[list[int]]:
    """Example indices in chunks of at most ``size`` candidates of one query (each query's order seeded)."""
    by_query: dict = {}
    for i, ex in enumerate(examples):
        by_query.setdefault(str(ex.get("query_id", ex.get("query", i))), []).append(i)
    rng, out = np.random.default_rng([seed, 29]), []
    for rows in by_query.values():
        rows = [rows[j] for j in rng.permutation(len(rows))]
        out += [rows[s:s + size] for s in range(0, len(rows), size)]
    return out


# ---------------------------------------------------------------- training

class _Flat:
    """A BatchStream of chunks seen as a stream of examples (a micro-batch = its chunks, concatenated)."""

    def __init__(self, chunks: BatchStream):
        self.chunks, self.per_epoch = chunks, chunks.per_epoch

    def __call__(self, m: int) -> list:
        return [ex for chunk in self.chunks(m) for ex in chunk]


def _load_policy(cfg: SFTConfig, loop: RunLoop):
    """(model, tokenizer) to train: the start model or the resumed checkpoint, lower layers frozen, in train mode."""
    model, tok = load_trainable(cfg.model, DTYPES[cfg.dtype], cfg.lora, loop.checkpoint, cfg.tokenizer or None,
                                seed=cfg.run.seed, tiny=cfg.tiny, prefix=cfg.prefix)
    model.to(loop.device)
    if cfg.freeze_layers:
        freeze_lower_layers(model, cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora is not None:
            model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
    model.train()
    return model, tok


def _encode_train(cfg: SFTConfig, tok, train: list[dict], loop: RunLoop) -> list[dict | None]:
    """Each example encoded (None: longer than max_length): a seeded cot_fraction keeps its chain of thought (the rest
    train on the grade token alone), a seeded hint_fraction reads guided replay's hint in its prompt."""
    with_cot = np.random.default_rng([cfg.run.seed, 31]).random(len(train)) < cfg.cot_fraction
    with_hint = np.random.default_rng([cfg.run.seed, 37]).random(len(train)) < cfg.hint_fraction
    encoded = [encode_example(tok, render_prompt(tok, hinted_prompt(ex["prompt"], hint_text(ex)) if hint else
                                                 ex["prompt"], cfg.chat_template),
                              ex["completion"] if cot or ex.get("cot_only") else grade_token(int(ex["grade"])),
                              cfg.max_length, eos=bool(cot or ex.get("cot_only")))
               for ex, cot, hint in zip(train, with_cot, with_hint)]
    for ex, e in zip(train, encoded):
        if e is not None and ex.get("cot_only"):  # the grade token is read (the CoT follows it), never a target
            e["labels"][next(k for k, t in enumerate(e["labels"]) if t != IGNORE)] = IGNORE
    dropped = sum(e is None for e in encoded)
    if dropped == len(encoded):
        raise InputError(f"no training example fits max_length={cfg.max_length} ({dropped} dropped)")
    if dropped:
        loop.print(f"dropped {dropped} of {len(encoded)} training examples longer than {cfg.max_length} tokens")
    return encoded


def _batch_stream(cfg: SFTConfig, train: list[dict], encoded: list[dict | None]):
    """stream(m): the m-th micro-batch of the encoded examples that fit; with query_chunk, whole chunks of one
    query's candidates (the pairs the rank loss needs)."""
    data = [e for e in encoded if e is not None]
    if cfg.query_chunk:
        kept = [ex for ex, e in zip(train, encoded) if e is not None]
        ranked = [i for i, ex in enumerate(kept) if not ex.get("cot_only")]
        chunks = [[data[ranked[i]] | {"group": g, "grade": int(kept[ranked[i]]["grade"])} for i in c]
                  for g, c in enumerate(query_chunks([kept[i] for i in ranked], cfg.query_chunk, cfg.run.seed))]
        # CoT-only examples fill whole chunks of any queries, each a group of its own: no ranking pair holds one
        free = [i for i, ex in enumerate(kept) if ex.get("cot_only")]
        free = [free[j] for j in np.random.default_rng([cfg.run.seed, 41]).permutation(len(free))]
        chunks += [[data[i] | {"group": -1 - i, "grade": int(kept[i]["grade"])} for i in free[s:s + cfg.query_chunk]]
                   for s in range(0, len(free), cfg.query_chunk)]
        return _Flat(BatchStream(chunks, max(1, cfg.batch_size // cfg.query_chunk), cfg.run.seed))
    return BatchStream(data, cfg.batch_size, cfg.run.seed,
                       [len(e["input_ids"]) for e in data] if cfg.group_by_length else None)


def train_sft(cfg: SFTConfig, examples_train: list[dict], examples_eval: list[dict] | None = None,
              resume: bool | None = None) -> SFTResult:
    """Fine-tune on examples_train ({"prompt", "completion", "grade"}); evaluate on examples_eval."""
    if resume is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=resume))
    loop = RunLoop("sft", cfg.run, cfg, resume_ignores=DECODE_ONLY)
    model, tok = _load_policy(cfg, loop)
    gids = grade_token_ids(tok)
    train = subset(examples_train, cfg.max_train_examples, cfg.run.seed)
    evals = subset(examples_eval or [], cfg.eval.max_examples, cfg.run.seed)
    check_order(train, cfg.prompt.order)
    gweights = grade_weights([int(ex["grade"]) for ex in train if not ex.get("cot_only")],
                             cfg.label_loss_weight, cfg.balance_grades)
    encoded = _encode_train(cfg, tok, train, loop)
    dropped = sum(e is None for e in encoded)
    stream = _batch_stream(cfg, train, encoded)
    per_step = cfg.grad_accum * loop.world  # micro-batches per optimizer step, over all ranks
    total = total_steps(cfg.optim, stream.per_epoch, per_step)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total, head_lr=cfg.head_lr)
    fwd = loop.wrap(model)

    def step(i: int) -> dict:
        t0 = time.perf_counter()
        batches = [collate(stream((i * cfg.grad_accum + j) * loop.world + loop.rank), tok.pad_token_id)
                   for j in range(cfg.grad_accum)]
        for b in batches:
            b["weights"] = target_weights(b["labels"], gids, gweights)  # [B, T]
        # normalise by the step's (weighted) completion tokens, so accumulation equals one big batch
        n_target = loop.sum(sum(float(b["weights"][:, 1:].sum()) for b in batches))
        loss_total, rank_total, n_tokens = 0.0, 0.0, 0
        for j, b in enumerate(batches):
            b = {k: v.to(loop.device) for k, v in b.items()}
            # DDP averages gradients over ranks; x world turns that into the global token-normalised sum
            sync = loop.world == 1 or j == len(batches) - 1
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                if cfg.rank_loss_weight:
                    loss_sum, _, glogits = completion_loss(fwd, b, gids)
                    ranked = rank_loss(glogits, b["grade"], b["group"])  # mean over this micro-batch's pairs
                    loss = loss_sum * loop.world / n_target + cfg.rank_loss_weight * ranked / len(batches)
                    rank_total += float(ranked.detach()) / len(batches)
                else:
                    loss_sum, _ = completion_loss(fwd, b)
                    loss = loss_sum * loop.world / n_target
                loss.backward()
            loss_total += float(loss_sum.detach())
            n_tokens += int(b["attention_mask"].sum())
        loss_total, n_tokens = loop.sum(loss_total), loop.sum(n_tokens)
        _, lr = optimizer_step(optimizer, scheduler, cfg.optim.max_grad_norm, f"sft step {i + 1}")
        row = {"epoch": round((i + 1) * per_step / stream.per_epoch, 4), "loss": loss_total / max(n_target, 1),
               "lr": lr, "tokens_per_s": n_tokens / max(time.perf_counter() - t0, 1e-9)}
        if cfg.rank_loss_weight:
            row["rank_loss"] = loop.sum(rank_total) / loop.world
        return row

    saver = PolicySaver(model, tok, cfg.lora)
    result = loop.fit(step, total, optimizer, scheduler, saver.save_weights, save_final=saver.save_final,
                      evaluate=(lambda: evaluate_examples(model, tok, evals, cfg.eval, cfg.prompt,
                                                          cfg.chat_template)) if evals else None,
                      eval_every=cfg.eval.every, postfix=("loss", "tokens_per_s"),
                      best_metric=cfg.eval.best_metric, model=model)
    return SFTResult(saver.trained_model(result.final_dir, loop.main), tok, result.step, result.final_dir, dropped,
                     result.last_eval)


# ---------------------------------------------------------------- `searchrl train sft`

def run_sft(cfg: SFTConfig) -> SFTResult:
    """Prepared dataset -> teacher completions (+ synthetic pairs, trimmed vocabulary) -> train_sft -> final/."""
    from searchrl.data.schema import load_dataset
    from searchrl.relevance.rules.engine import RuleEngine
    from searchrl.relevance.rules.llm_teacher import LLMTeacher
    from searchrl.relevance.rules.synthetic import synthetic_pairs
    from searchrl.relevance.rules.teacher import RuleTeacher
    if not cfg.data_dir:
        raise ConfigError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
    ds = load_dataset(cfg.data_dir)
    engine = RuleEngine.from_yaml(cfg.rules or None)
    teacher = RuleTeacher(engine, cfg.prompt, cfg.on_disagree)
    if cfg.teacher == "llm":  # the rule teacher stays as the fallback for unusable answers
        llm = cfg.llm if cfg.llm.cache_dir else dataclasses.replace(cfg.llm, cache_dir=f"{cfg.run.output_dir}/llm_cache")
        teacher = LLMTeacher(llm, cfg.prompt, fallback=teacher)  # answers cached: a rerun pays for no call twice
    train_ex, report = build_examples(ds.split("train").pairs(), teacher, cfg.prompt)
    synthetic = synthetic_pairs(ds, engine, cfg.synthetic_queries, cfg.synthetic_per_query, seed=cfg.run.seed,
                                exclude_splits=tuple({"valid", "test", cfg.eval.split} - {"train"}),
                                progress=cfg.run.progress)
    # graded by the rules themselves, so the rule teacher always agrees; an LLM teacher is not paid for these
    syn_ex, _ = build_examples(synthetic, RuleTeacher(engine, cfg.prompt, "condition"), cfg.prompt)
    syn_ex = [ex | {"cot_only": True} for ex in syn_ex] if cfg.synthetic_cot_only else syn_ex
    eval_ex = split_examples(ds, cfg.eval.split, cfg.prompt, engine=engine)  # prompts and gold grades only
    rank = int(os.environ.get("RANK", "0"))
    train_cfg = cfg
    if cfg.trim_vocab:  # the catalogue as prompts render it, plus every train completion
        # each torchrun rank builds the same vocabulary (a pure function of the data) into its own directory
        tok_dir = Path(cfg.run.output_dir) / ("tokenizer" if rank == 0 else f"tokenizer-rank{rank}")
        catalogue = (build_prompt("", p, cfg.prompt) for p in ds.products.to_dict("records"))
        tok = trim_minilm_tokenizer([*catalogue, *(ex["prompt"] + ex["completion"] for ex in train_ex + syn_ex)],
                                    tok_dir)
        if rank == 0:
            print(f"sft: vocabulary trimmed to {len(tok)} of MiniLM's tokens ({tok_dir})")
        train_cfg = dataclasses.replace(cfg, tokenizer=str(tok_dir), trim_vocab=False)
    if rank == 0:
        r = report.as_dict()
        print(f"sft: {len(train_ex)} train examples (teacher agreed {r['agreed']}, conditioned {r['conditioned']}, "
              f"dropped {r['dropped']}), {len(syn_ex)} rule-graded pairs for "
              f"{synthetic['query_id'].nunique() if len(synthetic) else 0} synthetic queries, "
              f"{len(eval_ex)} {cfg.eval.split} examples")
    result = train_sft(train_cfg, train_ex + syn_ex, eval_ex)
    if rank == 0 and result.final_dir is not None:
        save_scorer_config(result.final_dir, ScorerConfig(prompt=cfg.prompt, chat_template=cfg.chat_template))
        Path(result.final_dir, "teacher_report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        Path(result.final_dir, "sft_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return result
