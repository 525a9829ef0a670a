"""GRPO maths (searchrl.rl.grpo_loss) against TRL's GRPOTrainer on the same tensors, plus behaviour TRL lacks.

Parity runs TRL's own code, not a re-derivation: a GRPOTrainer over a random tiny Qwen2 (float64), then
- `_generate_and_score_completions` with a reward function that returns fixed rewards -> TRL's advantages;
- `_compute_loss(model, inputs)` on hand-built inputs -> TRL's loss; its per-token loss and per-token logps are
  read from the function's locals as it returns (sys.setprofile), its clip fractions and KL from trainer._metrics.
TRL's fused LM head computes log-probs in float32 whatever the model dtype (trl/kernels/chunked_logprob.py,
`tile.float()`), so the maths is compared on TRL's own logps (to 1e-12: bit-equal in practice), and end to end
from our `token_logps` on the same model to 1e-6 (loss) and float32 precision (logps, gradients). The model is in
eval mode, so TRL skips its gradient-accumulation scaling (`current_gradient_accumulation_steps` exists only inside
`train()`).
"""

import math
import sys

import pytest
import torch

from searchrl.rl.grpo_loss import (
    aggregate,
    clipped_surrogate,
    dynamic_sampling_mask,
    group_advantages,
    k3_kl,
    token_logps,
)

G = 4  # samples per prompt
EPS_LOW, EPS_HIGH = 0.2, 0.28  # clip-higher, so the two bounds are told apart
# per-row offsets of old_logp from the current logp: w ~ exp(-offset), so rows 0/3/6 sit above 1 + EPS_HIGH and
# rows 1/5 below 1 - EPS_LOW; with these advantages rows 0 and 1 are clipped (high, low), rows 3/5/6 are not
ROW_OFFSET = [-0.6, 0.6, 0.05, -0.6, 0.3, 0.6, -0.5, 0.0]
ADVANTAGES = [1.2, -0.8, 0.5, -0.9, 0.0, 1.1, -1.3, 0.7]


# ---------------------------------------------------------------- TRL harness (test_rl_dpo_loss imports it)
def tiny_tokenizer():
    """An offline 64-word tokenizer: [PAD]=0, [EOS]=1, w0..w61 = 2..63, split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["[PAD]", "[EOS]"] + [f"w{i}" for i in range(62)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]")


def tiny_qwen2(seed: int):
    """A random 1-layer Qwen2 over tiny_tokenizer's vocabulary (float32; callers cast)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model directory, tokenizer): tiny_qwen2 saved, since with beta > 0 TRL loads its reference from the path."""
    path = tmp_path_factory.mktemp("tiny_qwen2")
    tiny_qwen2(seed=0).save_pretrained(path)
    return path, tiny_tokenizer()


def make_trainer(tiny, tmp_path, reward_fn=None, **overrides):
    pytest.importorskip("trl")  # a test dependency; the behavioural tests below run without it
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    path, tokenizer = tiny
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float64)  # fresh: TRL patches the forward
    args = dict(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, bf16=False, num_generations=G,
                per_device_train_batch_size=G, max_completion_length=2, epsilon=EPS_LOW, epsilon_high=EPS_HIGH)
    args.update(overrides)
    return GRPOTrainer(model=model, reward_funcs=reward_fn or (lambda completions, **kw: [0.0] * len(completions)),
                       args=GRPOConfig(**args), train_dataset=Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5"]}),
                       processing_class=tokenizer)


def call_capturing_locals(fn, *args):
    """fn(*args), and the local variables of fn's own frame at the moment it returned."""
    code, captured = fn.__func__.__code__, {}

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is code:
            captured.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(previous)
    return result, captured


def batch(model):
    """Inputs for TRL's _compute_loss ([B*G, T] = [8, 6]) and our per-token logps from the same model."""
    g = torch.Generator().manual_seed(1)
    n, p, t = len(ADVANTAGES), 3, 6
    prompt_ids, completion_ids = torch.randint(2, 64, (n, p), generator=g), torch.randint(2, 64, (n, t), generator=g)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[0, 0] = 0  # TRL left-pads prompts
    lengths = torch.tensor([6, 3, 5, 1, 6, 4, 6, 2])  # right-padded completions, one of a single token
    completion_mask = (torch.arange(t) < lengths[:, None]).long()  # [B*G, T]
    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                   attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits
    logp = token_logps(logits[:, p - 1:-1], completion_ids)  # [B*G, T]; logits at p-1+j score completion token j
    noise = torch.tensor(ROW_OFFSET, dtype=torch.float64)[:, None] + 0.3 * torch.randn(n, t, generator=g,
                                                                                       dtype=torch.float64)
    inputs = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                  completion_mask=completion_mask, advantages=torch.tensor(ADVANTAGES, dtype=torch.float64),
                  old_per_token_logps=logp.detach() + noise,
                  ref_per_token_logps=logp.detach() + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64),
                  num_items_in_batch=completion_mask.sum())
    return inputs, logp


def ours(logp, inputs, loss_type, beta, level, num_items=None, kl_ratio_correction=True):
    per_token, stats = clipped_surrogate(logp, inputs["old_per_token_logps"], inputs["advantages"],
                                         inputs["completion_mask"], EPS_LOW, EPS_HIGH, ratio_level=level,
                                         ref_logp=inputs["ref_per_token_logps"] if beta else None, beta=beta,
                                         kl_ratio_correction=kl_ratio_correction)
    return per_token, stats, aggregate(per_token, inputs["completion_mask"], loss_type, num_items=num_items)


# ---------------------------------------------------------------- parity with TRL
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
@pytest.mark.parametrize("beta,correction", [(0.0, True), (0.04, True), (0.04, False)])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_loss_matches_trl(tiny, tmp_path, loss_type, beta, correction, level):
    """correction: TRL's use_bias_correction_kl (default True), our kl_ratio_correction."""
    trainer = make_trainer(tiny, tmp_path, loss_type=loss_type, beta=beta, importance_sampling_level=level,
                           use_bias_correction_kl=correction)
    model = trainer.model
    inputs, logp = batch(model)
    mask = inputs["completion_mask"].bool()
    trl_loss, trl = call_capturing_locals(trainer._compute_loss, model, inputs)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    # the maths, on TRL's own per-token logps
    per_token, stats, loss = ours(trl["per_token_logps"], inputs, loss_type, beta, level, None, correction)
    trl_per_token = trl["per_token_loss"].expand(per_token.shape)  # [B*G, 1] at sequence level with beta 0
    torch.testing.assert_close(per_token[mask], trl_per_token[mask], rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-12)
    for ours_name, trl_name in [("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"),
                                ("clip_region", "clip_ratio/region_mean")] + ([("kl", "kl")] if beta else []):
        assert stats[ours_name].item() == pytest.approx(metrics[trl_name], abs=1e-6), ours_name
    assert ("kl" in metrics) == bool(beta)
    assert stats["clip_low"] > 0 and stats["clip_high"] > 0  # the data exercises both bounds

    # end to end from our logps: TRL's are float32 (one ulp at |logp| ~ 4 is 5e-7), the loss still agrees to 1e-6
    torch.testing.assert_close(logp[mask], trl["per_token_logps"][mask].double(), rtol=0, atol=2e-6)
    _, _, our_loss = ours(logp, inputs, loss_type, beta, level, None, correction)
    torch.testing.assert_close(our_loss, trl_loss, rtol=0, atol=1e-6)
    params = [q for q in model.parameters() if q.requires_grad]
    trl_grads = torch.autograd.grad(trl_loss, params)
    our_grads = torch.autograd.grad(our_loss, params)
    for a, b in zip(our_grads, trl_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dapo_num_items_matches_trl(tiny, tmp_path):
    """A micro-batch of a larger generation batch: TRL divides by num_items_in_batch, we by num_items."""
    trainer = make_trainer(tiny, tmp_path, loss_type="dapo")
    inputs, _ = batch(trainer.model)
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum() * 3
    trl_loss, trl = call_capturing_locals(trainer._compute_loss, trainer.model, inputs)
    _, _, loss = ours(trl["per_token_logps"], inputs, "dapo", 0.0, "token", num_items=inputs["num_items_in_batch"])
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-12)
    _, _, local = ours(trl["per_token_logps"], inputs, "dapo", 0.0, "token")
    assert loss.item() == pytest.approx(local.item() / 3)


def test_advantages_match_trl(tiny, tmp_path):
    """TRL's reward -> advantage path (_generate_and_score_completions), for each scale_rewards."""
    rewards = [1.0, 0.0, 0.0, 1.0,  2.0, 2.0, 2.0, 2.0,  0.3, 0.1, 0.7, 0.25]  # 3 groups; the middle one all equal
    prompts = [{"prompt": p} for p in ["w1 w2 w3"] * G + ["w4 w5"] * G + ["w6"] * G]
    for scale in ["group", "batch", "none"]:
        trainer = make_trainer(tiny, tmp_path, reward_fn=lambda completions, **kw: list(rewards), scale_rewards=scale)
        trl_adv = trainer._generate_and_score_completions(prompts)["advantages"]
        ours_adv = group_advantages(torch.tensor(rewards), G, scale=scale)
        torch.testing.assert_close(ours_adv, trl_adv, rtol=0, atol=1e-6, msg=scale)
        assert ours_adv[4:8].abs().max() == 0  # an all-equal group has no signal, whatever the scale


# ---------------------------------------------------------------- advantages
def test_group_advantages_shapes_and_scales():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]], dtype=torch.float64)  # [B, G]
    flat = group_advantages(r.flatten(), G)
    assert flat.shape == (8,) and torch.equal(group_advantages(r, G).flatten(), flat)
    std0 = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert flat[0].item() == pytest.approx(0.5 / (std0 + 1e-4))
    torch.testing.assert_close(group_advantages(r, G, scale="none"), r - r.mean(1, keepdim=True))
    batch_std = r.flatten().std().item()  # one std for the batch, but each group keeps its own mean
    assert group_advantages(r, G, scale="batch")[1, 0].item() == pytest.approx(1.0 / (batch_std + 1e-4))
    assert group_advantages(r, G, eps=0.5)[0, 0].item() == pytest.approx(0.5 / (std0 + 0.5))


def test_group_advantages_clamp_and_degenerate_groups():
    r = torch.tensor([0.0, 0.0, 0.0, 1.0])  # one outlier in 4: advantage ~ 1.5
    assert group_advantages(r, G).abs().max() > 1.4
    clamped = group_advantages(r, G, clamp=1.0)
    assert clamped.abs().max() == 1.0 and clamped[3] == 1.0
    assert torch.equal(group_advantages(torch.full((8,), 0.75), G), torch.zeros(8))  # no NaN from a 0 std
    assert torch.equal(group_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))  # G = 1: nothing to compare
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), G)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(8), G, scale="global")


# ---------------------------------------------------------------- dynamic sampling
def test_dynamic_sampling_drops_all_equal_groups():
    r = torch.tensor([1.0, 1.0, 1.0, 1.0,  0.0, 1.0, 0.0, 0.0,  0.1, 0.1, 0.1, 0.1,  0.0, 0.0, 0.0, 0.0])
    assert dynamic_sampling_mask(r, G).tolist() == [False, True, False, False]
    assert dynamic_sampling_mask(r.view(4, G), G).tolist() == [False, True, False, False]


def test_dynamic_sampling_tolerance_for_continuous_rewards():
    r = torch.tensor([0.5, 0.5 + 1e-9, 0.5, 0.5,  0.2, 0.9, 0.4, 0.6], dtype=torch.float64)
    assert dynamic_sampling_mask(r, G).tolist() == [True, True]  # exact test: 1e-9 apart is "different"
    assert dynamic_sampling_mask(r, G, std_tol=1e-6).tolist() == [False, True]
    assert dynamic_sampling_mask(r, G, std_tol=1.0).tolist() == [False, False]


# ---------------------------------------------------------------- surrogate, KL, aggregation
def test_on_policy_loss_is_the_policy_gradient():
    torch.manual_seed(0)
    logp = (torch.randn(8, 5, dtype=torch.float64) - 2).requires_grad_()
    mask = torch.ones(8, 5)
    mask[2, 3:] = 0
    adv = torch.randn(8, dtype=torch.float64)
    per_token, stats = clipped_surrogate(logp, None, adv, mask)
    torch.testing.assert_close(per_token, -adv[:, None].expand(8, 5))  # ratio 1
    assert stats["clip_region"] == 0 and "kl" not in stats
    (grad,) = torch.autograd.grad(aggregate(per_token, mask, "dapo"), logp)
    torch.testing.assert_close(grad, -adv[:, None] * mask / mask.sum())  # -A * d logp / N


def test_asymmetric_clip_bounds():
    logp = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    old = -torch.log(torch.tensor([[1.25], [0.75]], dtype=torch.float64))  # w = 1.25, 0.75
    adv, mask = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 1)
    loss, stats = clipped_surrogate(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)  # only 0.75 is clipped
    torch.testing.assert_close(loss.flatten(), torch.tensor([-1.25, 0.8], dtype=torch.float64))
    assert stats["clip_low"] == 0.5 and stats["clip_high"] == 0 and stats["clip_region"] == 0.5
    loss, stats = clipped_surrogate(logp, old, adv, mask, eps_low=0.28, eps_high=0.2)  # only 1.25 is clipped
    torch.testing.assert_close(loss.flatten(), torch.tensor([-1.2, 0.75], dtype=torch.float64))
    assert stats["clip_low"] == 0 and stats["clip_high"] == 0.5
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert grad[0].item() == 0 and grad[1].item() == pytest.approx(0.75)  # a clipped token stops pushing


def test_sequence_ratio_is_one_per_row_and_ignores_padding():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 6, generator=g, dtype=torch.float64)
    old = logp + 0.1 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 2:] = False
    logp[1, 2:], old[1, 2:] = 50.0, -math.inf  # garbage padding must not leak into the row
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    loss, _ = clipped_surrogate(logp, old, adv, mask, ratio_level="sequence")
    assert loss.shape == (4, 6) and torch.isfinite(loss).all()
    w1 = torch.exp((logp[1, :2] - old[1, :2]).mean())
    assert torch.equal(loss[1], loss[1, :1].expand(6))
    assert loss[1, 0].item() == pytest.approx(-torch.min(-w1, -w1.clamp(0.8, 1.2)).item())
    assert torch.isfinite(aggregate(loss, mask, "grpo"))


def test_k3_kl_estimates_kl_and_enters_loss_with_beta():
    g = torch.Generator().manual_seed(0)
    p, q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0), torch.softmax(
        torch.randn(6, generator=g, dtype=torch.float64), 0)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = k3_kl(p.log()[tokens], q.log()[tokens]).mean().item()
    assert estimate == pytest.approx((p * (p / q).log()).sum().item(), rel=0.03)  # unbiased under the policy
    assert k3_kl(p.log(), p.log()).abs().max() == 0 and (k3_kl(p.log(), q.log()) >= 0).all()

    logp, ref, mask = p.log().repeat(2, 1), q.log().repeat(2, 1), torch.ones(2, 6)
    base, _ = clipped_surrogate(logp, None, torch.ones(2), mask)
    with_kl, stats = clipped_surrogate(logp, None, torch.ones(2), mask, ref_logp=ref, beta=0.04)
    torch.testing.assert_close(with_kl - base, 0.04 * k3_kl(logp, ref))  # on-policy: w = 1 in value
    assert stats["kl"].item() == pytest.approx(k3_kl(p.log(), q.log()).mean().item())
    # off-policy, the ratio-corrected KL is weighted by w = pi / pi_old; uncorrected it is not
    old = logp - 0.1
    corrected, _ = clipped_surrogate(logp, old, torch.zeros(2), mask, ref_logp=ref, beta=1.0)
    plain, _ = clipped_surrogate(logp, old, torch.zeros(2), mask, ref_logp=ref, beta=1.0, kl_ratio_correction=False)
    torch.testing.assert_close(plain, k3_kl(logp, ref))
    torch.testing.assert_close(corrected, math.exp(0.1) * k3_kl(logp, ref))
    with pytest.raises(ValueError):
        clipped_surrogate(logp, None, torch.ones(2), mask, beta=0.04)


def test_dapo_weighs_tokens_grpo_weighs_sequences():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert aggregate(loss, mask, "dapo").item() == pytest.approx(8 / 5)
    assert aggregate(loss, mask, "grpo").item() == pytest.approx((1 + 4) / 2)
    empty = torch.zeros(2, 4, dtype=torch.long)
    assert aggregate(loss, empty, "dapo") == 0 and aggregate(loss, empty, "grpo") == 0
    with pytest.raises(ValueError):
        aggregate(loss, mask, "bnpo")


def test_token_logps():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 5, 11, generator=g), torch.randint(0, 11, (3, 5), generator=g)
    expected = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, labels), expected)
    torch.testing.assert_close(token_logps(logits, labels, temperature=0.7),
                               (logits / 0.7).log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1))
    labels[0, 2] = -100
    out = token_logps(logits.bfloat16(), labels)
    assert out.dtype == torch.float32 and out[0, 2] == 0
    torch.testing.assert_close(out[1], expected[1], atol=0.05, rtol=0)
