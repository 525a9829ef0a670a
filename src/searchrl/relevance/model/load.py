"""Load a causal LM as a relevance model, and read its four grade probabilities.

- :func:`load_relevance_model`: any Hugging Face causal LM (local files only: a model
  directory, a GGUF file or a packaged GGUF name, see pretrained.resolve_model), with
  the four grade tokens added as special tokens and the embeddings grown to fit;
  optionally wrapped in LoRA (peft) with the new tokens' embedding rows trainable.
- :func:`tiny_qwen2` / :func:`minilm_tokenizer`: a random-weight Qwen2 over the
  MiniLM WordPiece vocabulary that ships with the environment. It knows nothing; it
  exists so that every trainer runs offline, in seconds, in tests and smoke runs.
- :func:`grade_probs`: softmax over the four grade-token logits at the first
  completion position (the prompt's last token), batched with left padding.

Simplifies: prompts are encoded without the tokenizer's own special tokens (a chat
template already writes them into the string), plus a BOS token for tokenizers that
ask for one; the new tokens' rows start at the mean of the old embedding rows
(transformers' resize default) rather than at something smarter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from searchrl.config import when_set
from searchrl.errors import ConfigError, ModelError
from searchrl.relevance.format.prompt import GRADE_TOKENS
from searchrl.relevance.model.builds import (
    MINILM_DECODER,
    MINILM_QWEN2,
    TINY,
    TinyModel,
    minilm_decoder,
    minilm_qwen2,
    tiny_qwen2,
)
from searchrl.relevance.model.lora import LoraSettings, apply_lora
from searchrl.relevance.model.prefix_lm import MINILM_PREFIX, PrefixLMForCausalLM
from searchrl.relevance.model.tokenizer import (
    add_grade_tokens,
    encode_prompt,
    grade_token_ids,
    load_tokenizer,
    minilm_tokenizer,
)
from searchrl.rl.rollout import left_pad

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # config dtype names


@dataclass
class PrefixLMSettings:
    """How the "minilm-prefix" build (prefix_lm.py) reads a pair; saved in its config.json."""
    mask: str = "late"  # late: query and product encoded apart (the bi-encoder start) | block: product reads query
    readout: str = "sim"  # sim: + w * cosine(query, product) in the grade logits | token: the LM head alone
    sim_scale: float = 20.0  # initial |w| of the similarity term (per grade: -1, -1/3, 1/3, 1 times this)
    cot_layers: int = 0  # top blocks with completion adapters (gated to the completion: the grade path never sees
    #   them) and the completion's own head; 0 = the completion is written by the shared head alone
    cot_rank: int = 32  # rank of those adapters
    cot_copy: bool = when_set(False)  # the completion's logits also weigh each word of the query and of the
    #   product by a learned per-position gate (a copy term: the type steps name a type the text names)
    cot_grade: bool = when_set(False)  # every completion position reads a learned vector of the grade it starts with:
    #   the steps follow the grade written before them (label-first self-consistency); prompt positions never read it

    def __post_init__(self):
        if not 0 <= self.cot_layers <= 6 or self.cot_rank < 1:  # all-MiniLM-L6-v2 has six blocks
            raise ConfigError(f"prefix.cot_layers must be in 0..6 and prefix.cot_rank >= 1, got "
                              f"{self.cot_layers} and {self.cot_rank}")


# ---------------------------------------------------------------- tokenizer / tiny model


# ---------------------------------------------------------------- loading

def _resize(model, tokenizer) -> None:
    # many checkpoints pad the embedding matrix beyond len(tokenizer); only grow when a token has no row
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


def load_relevance_model(name_or_path: str, dtype: torch.dtype = torch.float32, lora: LoraSettings | None = None,
                         tokenizer_path: str | None = None, seed: int = 0, tiny: TinyModel | None = None,
                         prefix: PrefixLMSettings | None = None):
    """(model, tokenizer) for a local causal LM directory, a GGUF file or packaged GGUF name (dequantised once
    and cached: pretrained.resolve_model), or an in-code build (TINY, MINILM_DECODER, MINILM_QWEN2,
    MINILM_PREFIX: prefix_lm.py with ``prefix``'s settings).

    The tokenizer gets the grade tokens (once: loading a saved relevance model adds
    nothing) and a pad token (EOS when it has none). `tokenizer_path` overrides where
    the tokenizer comes from. With `lora`, the model comes back as a peft model.
    """
    from transformers import AutoModelForCausalLM
    if name_or_path in MINILM_BUILDS:
        tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else minilm_tokenizer()
        add_grade_tokens(tokenizer)
        t, pre = tiny or TinyModel(), prefix or PrefixLMSettings()
        build = {TINY: lambda: tiny_qwen2(tokenizer, t.hidden, t.layers, t.heads, t.kv_heads, t.intermediate, seed),
                 MINILM_DECODER: lambda: minilm_decoder(tokenizer), MINILM_QWEN2: lambda: minilm_qwen2(tokenizer, tiny, seed),
                 MINILM_PREFIX: lambda: PrefixLMForCausalLM.from_minilm(tokenizer, pre.mask, pre.readout, pre.sim_scale,
                                                                       pre.cot_layers, pre.cot_rank, pre.cot_copy,
                                                                       pre.cot_grade)}
        with torch.random.fork_rng(devices=[]):  # the head's init draws: never shift the caller's stream
            torch.manual_seed(seed)
            model = build[name_or_path]().to(dtype)
    else:
        from searchrl.relevance.model.pretrained import resolve_model
        from searchrl.relevance.model.scorer_config import check_safetensors
        path = resolve_model(name_or_path)  # a directory as it is; a GGUF (or packaged name) -> its cached checkpoint
        check_safetensors(path)  # a pickled checkpoint can run code when loaded: refused
        tokenizer = load_tokenizer(resolve_model(tokenizer_path) if tokenizer_path else path)
        add_grade_tokens(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise ModelError(f"{name_or_path}: tokenizer has no EOS token; completions need one to end")
    _resize(model, tokenizer)
    if lora is not None:
        model = apply_lora(model, tokenizer, lora)
    return model, tokenizer


def load_trainable(name_or_path: str, dtype: torch.dtype, lora: LoraSettings | None, checkpoint: Path | None,
                   tokenizer_path: str | None = None, seed: int = 0, tiny: TinyModel | None = None,
                   prefix: PrefixLMSettings | None = None):
    """(model, tokenizer) a trainer starts from: ``name_or_path`` (wrapped in LoRA when asked), or, resuming,
    the checkpoint's full weights -- or the base plus the checkpoint's adapters under LoRA (a LoRA checkpoint
    holds the adapters and grade-token rows only)."""
    if checkpoint is None or lora is not None:
        model, tok = load_relevance_model(name_or_path, dtype, lora, tokenizer_path, seed=seed, tiny=tiny, prefix=prefix)
        if checkpoint is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(Path(checkpoint) / "adapter_model.safetensors"))
        return model, tok
    return load_relevance_model(str(checkpoint), dtype)


# ---------------------------------------------------------------- prompts and scoring


@torch.no_grad()
def grade_probs(model, tokenizer, prompts: list[str], batch_size: int = 16) -> np.ndarray:
    """[N, 4] probabilities of <L1>..<L4> as the first completion token of each prompt.

    Prompts are used as given (render them first for chat models). Batches are
    formed from prompts of similar length to waste little on padding; rows come
    back in input order.
    """
    gids = torch.tensor(grade_token_ids(tokenizer))  # [4]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(prompts), len(GRADE_TOKENS)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask, pos = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)  # [B, T] each
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       logits_to_keep=1).logits  # [B, 1, V]: left padding puts every last token at T-1
        probs = torch.softmax(logits[:, -1, gids.to(device)].double(), dim=-1)  # [B, 4], float64 so rows sum to 1
        out[idx] = probs.cpu().numpy()
    model.train(was_training)
    return out


# ---------------------------------------------------------------- offline default candidates

MINILM_BUILDS = (TINY, MINILM_DECODER, MINILM_QWEN2, MINILM_PREFIX)  # models built here over MiniLM's vocabulary


