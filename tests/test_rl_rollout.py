"""Rollouts: G continuations per prompt from one prefill, greedy equal to generate(), seeded sampling."""

import torch

from searchrl.relevance.model.builds import TINY
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.rl.rollout import left_pad, sample_groups, top_p_filter

PROMPTS = ["Query: laptop\nTitle: Dell XPS 13\nAnswer:\n", "Query: usb c cable for a phone\nTitle: Anker cable\n"]


def test_greedy_rollout_equals_generate():
    model, tok = load_relevance_model(TINY, seed=2)
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    r = sample_groups(model, tok, ids, group_size=2, max_new_tokens=6, temperature=0)
    assert r.completion_ids.shape[0] == 4 and r.prompt_ids.shape[0] == 4
    x, m, _ = left_pad(ids, tok.pad_token_id)
    ref = model.generate(input_ids=x, attention_mask=m, do_sample=False, max_new_tokens=6,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, x.shape[1]:]
    for i in range(2):
        for j in (2 * i, 2 * i + 1):  # both samples of a greedy group are the same
            got = r.completion_ids[j][r.completion_mask[j].bool()]
            assert got.tolist() == ref[i][: len(got)].tolist()


def test_seeded_sampling_is_reproducible_and_stops_at_eos():
    model, tok = load_relevance_model(TINY, seed=2)
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    a = sample_groups(model, tok, ids, 4, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = sample_groups(model, tok, ids, 4, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert len({tuple(row.tolist()) for row in a.completion_ids[:4]}) > 1  # a group's samples differ
    # make prompt 0's greedy second token the EOS: its rows stop there, padding and mask 0 follow
    greedy = sample_groups(model, tok, ids, 1, 4, temperature=0)
    seq = greedy.completion_ids[0].tolist()
    tok.eos_token = tok.convert_ids_to_tokens(seq[1])
    stop = seq.index(seq[1]) + 1  # the first time that token comes
    r = sample_groups(model, tok, ids, 3, 8, temperature=0)
    assert r.completion_mask[:3].sum(1).tolist() == [stop] * 3
    assert (r.completion_ids[:3, stop:] == tok.pad_token_id).all()
    for ids_row, m in zip(r.completion_ids, r.completion_mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # the mask is a prefix
        eos = (ids_row[:n] == tok.eos_token_id).nonzero()
        assert len(eos) <= 1 and (len(eos) == 0 or int(eos[0]) == n - 1)  # EOS only as the last kept token
    assert "[PAD]" not in r.texts(tok)[0]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)
