"""LoRA (peft) on a relevance model, with the grade tokens' embedding rows trainable; freezing the lower
blocks; and the frozen reference model DPO and GRPO read log-probs from (the adapters disabled, no copy).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from searchrl.errors import ModelError
from searchrl.relevance.model.tokenizer import grade_token_ids


@dataclass
class LoraSettings:
    r: int = 16  # rank of the low-rank update
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA branch input
    target_modules: list[str] = field(default_factory=list)  # Linear names to adapt; [] = the architecture's
    #   attention and MLP projections (Llama/Qwen/Gemma: q/k/v/o, gate/up/down; BERT: query/key/value, dense)


def default_lora_targets(model) -> list[str]:
    """The attention and MLP projection names of the model's architecture (what LoRA adapts by default)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for family in (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   ["query", "key", "value", "dense"], ["c_attn", "c_proj", "c_fc"]):
        found = [n for n in family if n in names]
        if found:
            return found
    raise ModelError(f"LoRA: no known projection names in {type(model).__name__}; set lora.target_modules")


def apply_lora(model, tokenizer, lora: LoraSettings):
    """Wrap `model` in LoRA; the grade tokens' embedding rows train too (they start untrained)."""
    from peft import LoraConfig, get_peft_model
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight
    # trainable_token_indices trains only these rows of the input embedding (and of a tied lm_head);
    # an untied lm_head has no such option, so it is trained whole via modules_to_save.
    emb_name = next(n for n, m in model.named_modules() if m is in_emb).rsplit(".", 1)[-1]
    extra = {}
    if not tied and out_emb is not None:
        extra["modules_to_save"] = [next(n for n, m in model.named_modules() if m is out_emb).rsplit(".", 1)[-1]]
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) or default_lora_targets(model), task_type="CAUSAL_LM",
                        trainable_token_indices={emb_name: grade_token_ids(tokenizer)}, **extra)
    return get_peft_model(model, config)


def freeze_lower_layers(model, n: int) -> int:
    """Freeze the input embeddings and the first ``n`` transformer blocks (BERT's encoder.layer, a decoder's
    layers), except parameters named ``cot_*`` (the prefix LM's completion adapters: new, so never frozen);
    returns how many parameters stay trainable."""
    blocks = None
    for path in ("bert.encoder.layer", "model.layers", "transformer.h"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            blocks = obj
            break
    if blocks is None:
        raise ModelError(f"freeze_layers: found no transformer blocks in {type(model).__name__}")
    if n > len(blocks):
        raise ModelError(f"freeze_layers={n} but the model has {len(blocks)} blocks")
    for p in [*model.get_input_embeddings().parameters(), *(q for b in blocks[:n] for q in b.parameters())]:
        p.requires_grad_(False)
    if hasattr(model, "bert"):  # BERT's position / type embeddings and their LayerNorm belong to the input side
        model.bert.embeddings.requires_grad_(False)
    for name, p in model.named_parameters():
        if name.rpartition(".")[2].startswith("cot_"):
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def frozen_reference(policy, reference):
    """The model that gives reference log-probs, in eval mode without gradients: ``reference`` when a frozen
    copy is held, else (LoRA) the policy itself with its adapters disabled -- the base model, no second copy.

    peft's ``disable_adapter`` also bypasses the trainable grade-token rows (``trainable_token_indices``, tied LM
    head included) and a ``modules_to_save`` LM head, so this is exactly the starting model however far the
    adapters have moved (tests/test_dpo.py compares it with a separately loaded copy, tied and untied)."""
    if reference is not None:
        with torch.no_grad():
            yield reference
        return
    was_training = policy.training
    policy.eval()  # no dropout in the reference, as for a held copy
    try:
        with torch.no_grad(), policy.disable_adapter():
            yield policy
    finally:
        policy.train(was_training)
