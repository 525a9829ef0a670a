"""MiniLM as a segmented prefix-LM (relevance/prefix_lm.py): the bi-encoder start, the attention pattern, exact
KV-cached decoding and prefix sharing, saving and loading, and training with the within-query rank loss."""

import numpy as np
import pytest
import torch
from conftest import sft_config_for_tests

from searchrl.config import config_from_dict
from searchrl.relevance.format.prompt import PromptConfig, build_prompt, product_text
from searchrl.relevance.model.load import PrefixLMSettings, grade_probs, load_relevance_model
from searchrl.relevance.model.prefix_lm import (
    MINILM_PREFIX,
    SEG_A,
    SEG_B,
    SEG_COMPLETION,
    SEG_READ,
    attention_bias,
    segments,
)
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.relevance.scoring.prefill import shared_prefix_grade_probs
from searchrl.rl.rollout import sample_groups

SEGMENTS = PromptConfig(layout="segments", max_description_chars=120, max_attributes=2, max_note_chars=0)
PRODUCTS = [{"title": "Dell XPS 13 laptop", "brand": "Dell", "category": "Notebook"},
            {"title": "Targus laptop bag 15.6 inch", "brand": "Targus", "category": "Bag"},
            {"title": "Logitech wireless mouse M185", "brand": "Logitech", "category": "Mouse"},
            {"title": "JBL Flip 5 bluetooth speaker", "brand": "JBL"}]


@pytest.fixture(scope="module")
def late():
    model, tok = load_relevance_model(MINILM_PREFIX)
    return model.eval(), tok


def test_segments_and_the_mask_follow_the_markers(late):
    _, tok = late
    ids = torch.tensor([encode_prompt(tok, build_prompt("laptop", PRODUCTS[0], SEGMENTS)) + [5, 6]])
    seg = segments(ids, torch.ones_like(ids), tok.sep_token_id)[0].tolist()
    n_a = seg.count(SEG_A)
    assert seg[:n_a] == [SEG_A] * n_a and seg[-3:] == [SEG_READ, SEG_COMPLETION, SEG_COMPLETION]
    allowed = attention_bias(torch.tensor([seg]), torch.ones(1, len(seg)), 0, "late", torch.float32)[0, 0] == 0
    b = seg.index(SEG_B)
    assert not allowed[b, 0] and not allowed[0, b]  # late: query and product never read each other
    assert allowed[-3, :len(seg) - 2].all() and not allowed[-3, -2:].any()  # the read token: the whole prompt
    assert allowed[-2, :len(seg) - 1].all() and not allowed[-2, -1]  # the completion is causal
    block = attention_bias(torch.tensor([seg]), torch.ones(1, len(seg)), 0, "block", torch.float32)[0, 0] == 0
    assert block[b, 0] and not block[0, b]  # block: the product reads the query, the query never the product
    hostile = build_prompt("laptop [SEP] bag", {"title": "a [SEP] b [CLS]"}, SEGMENTS)
    assert hostile.count("[SEP]") == 3 and hostile.count("[CLS]") == 2  # markers in user text are removed


def test_untrained_grades_rank_exactly_as_the_sentence_transformer(late):
    """The late mask, positions restarting per segment and zeroed grade rows: P(Good) is a monotone function of
    the zero-shot MiniLM cosine -- the model starts where the bi-encoder is."""
    from searchrl.retrieval.encoder import build_encoder, encode
    model, tok = late
    probs = grade_probs(model, tok, [build_prompt("laptop", p, SEGMENTS) for p in PRODUCTS])
    st = build_encoder(None, max_seq_length=None)
    q = encode(st, ["laptop"], progress=False)
    cos = (encode(st, [product_text(p, SEGMENTS) for p in PRODUCTS], progress=False) @ q.T)[:, 0]
    assert np.argsort(probs[:, 2:].sum(1)).tolist() == np.argsort(cos).tolist()
    sims = [model.sim_w.detach().numpy() * c for c in cos]  # the grade logits are sim_w * cos alone
    expected = np.exp(sims) / np.exp(sims).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_tokens_minilm_lacks_get_input_rows_of_their_own(late):
    # the embeddings stay frozen: a CoT written after the grade token can only see which grade (or whether a line
    # break or "=>") was written if their input rows differ; one shared row made every decoded CoT unparseable
    model, tok = late
    ids = [tok.convert_tokens_to_ids(t) for t in ("\n", "=>", "<L1>", "<L2>", "<L3>", "<L4>")]
    rows = model.get_input_embeddings().weight[ids].detach()
    dist = torch.cdist(rows, rows) + torch.eye(len(ids)) * 1e9
    assert dist.min() > 0.1  # MiniLM's rows are ~1 apart; pieces-mean rows differ by a piece or more
    eq, gt = (tok.convert_tokens_to_ids(t) for t in ("=", ">"))
    emb = model.get_input_embeddings().weight
    torch.testing.assert_close(rows[1], (emb[eq] + emb[gt]).detach() / 2)  # "=>": the mean of "=" and ">"
    head = model.head(torch.randn(3, model.config.hidden_size))
    assert torch.count_nonzero(head[:, ids[2:]]) == 0  # the grade logits still start at 0: the cosine start


@pytest.mark.parametrize("mask", ["late", "block"])
def test_kv_cached_decoding_and_prefix_sharing_are_exact(mask):
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(mask=mask), seed=3)
    model.eval()
    prompts = [build_prompt("laptop", p, SEGMENTS) for p in PRODUCTS] + [build_prompt("mouse", PRODUCTS[2], SEGMENTS)]
    plain = grade_probs(model, tok, prompts)
    shared = np.concatenate(shared_prefix_grade_probs(model, tok, [prompts[:4], prompts[4:]]))
    np.testing.assert_allclose(shared, plain, atol=1e-6)
    ids = encode_prompt(tok, prompts[1])
    cached = sample_groups(model, tok, [ids], 1, 5, temperature=0.0).completion_ids[0].tolist()
    seq, full = list(ids), []
    for _ in range(5):  # the full masked forward over prompt + tokens so far, at every step
        with torch.no_grad():
            full.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        seq.append(full[-1])
    assert cached == full[:len(cached)]


def test_save_load_round_trip_and_training_moves_the_ranking(tmp_path, tiny_data):
    from transformers import AutoModelForCausalLM

    from searchrl.relevance.train.sft import run_sft
    cfg = sft_config_for_tests({
        "model": MINILM_PREFIX, "prompt": {"layout": "segments", "max_note_chars": 0}, "trim_vocab": True,
        "freeze_layers": 4, "head_lr": 1e-3, "rank_loss_weight": 1.0, "query_chunk": 4, "batch_size": 8,
        "cot_fraction": 0.5, "data_dir": str(tiny_data),
        "optim": {"lr": 1e-4, "max_steps": 4}, "run": {"output_dir": str(tmp_path), "device": "cpu", "progress": False}})
    res = run_sft(cfg)
    rows = [__import__("json").loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("rank_loss" in r for r in rows)
    loaded = AutoModelForCausalLM.from_pretrained(res.final_dir)  # registered: plain transformers loads it
    model, tok = load_relevance_model(str(res.final_dir))
    frozen = model.bert.encoder.layer[0].attention.self.query.weight
    start, _ = load_relevance_model(MINILM_PREFIX, tokenizer_path=str(res.final_dir))
    assert torch.equal(frozen, start.bert.encoder.layer[0].attention.self.query.weight)  # frozen lower layers
    assert not torch.equal(model.bert.encoder.layer[5].attention.self.query.weight,
                           start.bert.encoder.layer[5].attention.self.query.weight)  # the top ones trained
    # the CoT's line and verdict tokens have no MiniLM row: their output rows learn although embeddings are frozen
    added = [tok.convert_tokens_to_ids(t) for t in ("\n", "=>")]
    assert set(added) <= set(model.config.added_token_ids)
    assert not torch.equal(model.added_delta, torch.zeros_like(model.added_delta))
    head = model.head(torch.randn(3, model.config.hidden_size))
    assert not torch.allclose(head[:, added[0]], head[:, added[1]])  # "\n" and "=>" are told apart
    p = [build_prompt("laptop", x, PromptConfig(layout="segments", max_note_chars=0)) for x in PRODUCTS]
    np.testing.assert_allclose(grade_probs(model, tok, p), grade_probs(loaded, tok, p), atol=1e-6)


def test_dpo_and_grpo_train_the_prefix_model(tmp_path):
    """The RL trainers take the segmented model as they take a decoder: a DPO step and a GRPO step whose
    rollouts decode through the KV cache after the product segment."""
    from searchrl.relevance.train.dpo import DPOConfig, train_dpo
    from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
    from searchrl.relevance.train.sample import write_pairs
    run = {"device": "cpu", "progress": False}
    prompts = [build_prompt("laptop", x, SEGMENTS) for x in PRODUCTS[:2]]
    pairs = write_pairs(tmp_path / "pairs.jsonl", [
        {"prompt": prompts[0], "chosen": "<L4>", "rejected": "<L1>", "grade": 4, "source": "test"},
        {"prompt": prompts[1], "chosen": "<L1>", "rejected": "<L4>", "grade": 1, "source": "test"}])
    dpo = train_dpo(config_from_dict(DPOConfig, {"model": MINILM_PREFIX, "pairs": str(pairs), "batch_size": 2,
                                                 "optim": {"max_steps": 2, "lr": 1e-4},
                                                 "run": {**run, "output_dir": str(tmp_path / "dpo")}}))
    model, tok = load_relevance_model(str(dpo.final_dir))
    start, _ = load_relevance_model(MINILM_PREFIX)
    p_good = grade_probs(model, tok, prompts)[:, 2:].sum(1)
    p_start = grade_probs(start, tok, prompts)[:, 2:].sum(1)
    assert p_good[0] - p_good[1] > p_start[0] - p_start[1]  # DPO moved the pair the way the preferences say
    grpo = train_grpo(config_from_dict(GRPOConfig, {
        "model": str(dpo.final_dir), "beta": 0.1, "optim": {"max_steps": 1},
        "run": {**run, "output_dir": str(tmp_path / "g")},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 4, "dynamic_sampling": False}}),
        [{"prompt": prompts[0], "grade": 4}, {"prompt": prompts[1], "grade": 1}])
    assert grpo.step == 1 and (grpo.final_dir / "model.safetensors").exists()


def assert_cached_greedy_decode_is_exact(model, tok, ids: list[int], steps: int = 4) -> None:
    """The KV-cached greedy decode (rl.rollout.sample_groups) writes what full forwards over the growing text do."""
    cached = sample_groups(model, tok, [ids], 1, steps, temperature=0.0).completion_ids[0].tolist()
    seq = list(ids)
    for _ in range(len(cached)):
        with torch.no_grad():
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert cached == seq[len(ids):]


def test_completion_adapters_never_touch_the_grade_path_and_decode_exactly_with_a_cache(tmp_path):
    from transformers import AutoModelForCausalLM

    from searchrl.config import OptimConfig
    from searchrl.relevance.model.lora import freeze_lower_layers
    from searchrl.training import build_optimizer
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(mask="block", cot_layers=2, cot_rank=4),
                                      seed=3)
    model.eval()
    prompts = [build_prompt("laptop", p, SEGMENTS) for p in PRODUCTS]
    before = grade_probs(model, tok, prompts)
    ids = encode_prompt(tok, prompts[1])
    with torch.no_grad():
        first = model(input_ids=torch.tensor([ids + [5, 6]])).logits[0, -1].clone()
        for name, p in model.named_parameters():  # as if training had moved every completion parameter
            if name.rpartition(".")[2].startswith("cot_"):
                p.add_(torch.randn_like(p) * 0.1)
    np.testing.assert_allclose(grade_probs(model, tok, prompts), before, atol=1e-6)  # the grade: untouched
    with torch.no_grad():
        moved = model(input_ids=torch.tensor([ids + [5, 6]])).logits[0, -1]
    assert not torch.allclose(moved, first, atol=1e-3)  # the completion: the adapters' to write
    assert_cached_greedy_decode_is_exact(model, tok, ids)
    # frozen MiniLM, trainable adapters at the head's learning rate; saved and loaded whole
    trainable = freeze_lower_layers(model, 6)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable > 0 and any(".cot_lora_b" in n for n in names) and not any(".query.weight" in n for n in names)
    opt, _ = build_optimizer(model, OptimConfig(lr=1e-4), 10, head_lr=1e-3)
    lora_b = next(p for n, p in model.named_parameters() if n.endswith("cot_lora_b"))
    assert next(g["lr"] for g in opt.param_groups if any(p is lora_b for p in g["params"])) == 1e-3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(grade_probs(loaded, tok, prompts), before, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(input_ids=torch.tensor([ids + [5, 6]])).logits[0, -1], moved, atol=1e-5)


@pytest.mark.parametrize("bad", [{"cot_layers": 7}, {"cot_layers": -1}, {"cot_layers": 2, "cot_rank": 0}])
def test_completion_adapter_settings_out_of_range_are_config_errors_naming_the_field(bad):
    from searchrl.errors import ConfigError
    with pytest.raises(ConfigError, match="prefix.cot_layers"):
        PrefixLMSettings(**bad)


@pytest.mark.parametrize("cot_layers", [0, 1])  # the shared head's completion positions, or the adapters' head
def test_the_copy_term_favours_the_prompts_words_in_the_completion_only_and_decodes_exactly_with_a_cache(cot_layers):
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(
        mask="block", cot_layers=cot_layers, cot_rank=4, cot_copy=True), seed=3)
    model.eval()
    prompts = [build_prompt("laptop", p, SEGMENTS) for p in PRODUCTS]
    ids = encode_prompt(tok, prompts[1])
    seq = torch.tensor([ids + [5, 6]])
    grades = grade_probs(model, tok, prompts)
    laptop, bag, absent = tok.convert_tokens_to_ids(["laptop", "bag", "zebra"])  # query / product-only / neither
    with torch.no_grad():  # +3 on every word of the query, +1 on every word of the product
        before = model(input_ids=seq).logits[0]
        model.cot_copy_gate.bias.copy_(torch.tensor([3.0, 1.0]))
        after = model(input_ids=seq).logits[0]
    np.testing.assert_allclose(grade_probs(model, tok, prompts), grades, atol=1e-6)  # the grade: untouched
    last = len(ids) + 1  # a completion position
    moved = (after - before)[last]
    assert moved[laptop] == pytest.approx(4.0, abs=1e-4)  # "laptop" is in the query and in the product's title
    assert moved[bag] == pytest.approx(1.0, abs=1e-4) and moved[absent] == pytest.approx(0.0)
    assert torch.allclose(after[:len(ids)], before[:len(ids)])  # prompt positions and the read token: no copy term
    assert_cached_greedy_decode_is_exact(model, tok, ids)  # the decode steps read their prompts' words


def test_grade_conditioning_moves_the_completion_by_its_grade_token_only_and_decodes_exactly_with_a_cache():
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(mask="block", cot_grade=True), seed=3)
    model.eval()
    prompts = [build_prompt("laptop", p, SEGMENTS) for p in PRODUCTS]
    ids = encode_prompt(tok, prompts[1])
    l1, l4 = model.config.grade_token_ids[0], model.config.grade_token_ids[3]
    grades = grade_probs(model, tok, prompts)

    def after(grade: int) -> torch.Tensor:  # [T, V]: the logits of a completion that starts with `grade`
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids + [grade, 5, 6]])).logits[0]

    start_l1, start_l4 = after(l1), after(l4)
    with torch.no_grad():  # a vector for <L1> only
        model.cot_grade_in[0].copy_(torch.randn(model.config.hidden_size))
    np.testing.assert_allclose(grade_probs(model, tok, prompts), grades, atol=1e-6)  # the grade: untouched
    moved_l1 = after(l1)
    torch.testing.assert_close(moved_l1[:len(ids)], start_l1[:len(ids)])  # prompt positions and the read token
    assert not torch.allclose(moved_l1[-1], start_l1[-1], atol=1e-3)  # the steps after <L1> move
    torch.testing.assert_close(after(l4), start_l4)  # those after <L4> do not
    with torch.no_grad():
        model.cot_grade_in.copy_(torch.randn_like(model.cot_grade_in))
    assert sample_groups(model, tok, [ids], 1, 1, temperature=0.0).completion_ids[0, 0] in model.config.grade_token_ids
    assert_cached_greedy_decode_is_exact(model, tok, ids)  # the decode steps read their rows' grades
    with pytest.raises(ValueError, match="completion_start"):
        cache = model(input_ids=torch.tensor([ids]), use_cache=True).cache
        model(input_ids=torch.tensor([[l1]]), past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("pad_left", [False, True])
def test_a_frozen_prompt_trains_without_autograd_and_gives_the_full_forwards_logits_and_gradients(pad_left):
    """With every prompt parameter frozen, a forward under autograd encodes the prompts once without a graph and
    runs only the completions with it (PrefixLMForCausalLM._forward_frozen_prompt); logits and the gradients of
    every trainable parameter match the full forward's, for completions of several lengths and either padding."""
    from searchrl.relevance.model.lora import freeze_lower_layers
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(
        mask="block", cot_layers=2, cot_rank=4, cot_copy=True, cot_grade=True), seed=3)
    freeze_lower_layers(model, 6)
    with torch.no_grad():  # as if trained: every trainable parameter away from its (often zero) start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    g = model.config.grade_token_ids
    prompts = [encode_prompt(tok, build_prompt("laptop", p, SEGMENTS)) for p in PRODUCTS[:3]]
    rows = [prompts[0] + [g[2], 5, 6, 7], prompts[1] + [g[0]], prompts[2] + [g[3], 8]]
    width = max(map(len, rows))
    ids, mask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        at = slice(width - len(r), width) if pad_left else slice(0, len(r))
        ids[i, at], mask[i, at] = torch.tensor(r), 1
    assert model.prompt_is_frozen()
    weights = torch.linspace(-1, 1, model.config.vocab_size)
    for keep in (0, width - min(map(len, prompts)) + 1):  # every position; from the earliest read token on
        found = []
        for explicit_positions in (False, True):  # explicit position ids take the full forward
            model.zero_grad()
            extra = {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)} if explicit_positions else {}
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
            real = mask[:, -logits.shape[1]:] > 0
            (logits[real] @ weights).sum().backward()
            found.append((logits[real].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None}))
        (split, split_grads), (full, full_grads) = found
        torch.testing.assert_close(split, full, atol=1e-4, rtol=1e-4)
        assert set(split_grads) == set(full_grads) and any(".cot_lora_b" in n for n in full_grads)
        for name, grad in full_grads.items():
            torch.testing.assert_close(split_grads[name], grad, atol=1e-4 * float(grad.abs().max()) + 1e-7, rtol=1e-3)
    next(model.bert.encoder.layer[5].attention.self.query.parameters()).requires_grad_(True)
    assert not model.prompt_is_frozen()  # a trainable block: the full forward
