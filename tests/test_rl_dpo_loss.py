"""DPO maths (searchrl.rl.dpo_loss) against TRL's DPOTrainer (loss_type="sigmoid"), plus plain behaviour.

TRL 1.16 exposes the sigmoid loss only inside `DPOTrainer._compute_loss(model, inputs, return_outputs)`, so the
parity test builds a DPOTrainer over a random tiny Qwen2 policy and a differently seeded reference (float64),
calls `_compute_loss` on a hand-built [chosen; rejected] batch and reads its per-pair losses and summed log-probs
from the function's locals as it returns (sys.setprofile), its reward logs from trainer._metrics. Like GRPO's,
TRL's log-probs are float32 whatever the model dtype, so the maths is compared on TRL's own log-probs and end to
end only to float32 precision on the log-probs.
"""

import math

import pytest
import torch
from test_rl_grpo_loss import call_capturing_locals, tiny_qwen2, tiny_tokenizer

from searchrl.rl.dpo_loss import dpo_sigmoid_loss, sequence_logps


def dpo_batch():
    """[chosen; rejected] rows for 3 pairs: prompt then completion, right-padded; the completion_mask marks the
    completion tokens (what TRL's collator builds)."""
    prompts = [[5, 6], [7], [8, 9, 10]]
    chosen = [[11, 12, 1], [13, 14, 15, 1], [16, 1]]
    rejected = [[17, 1], [18, 19, 1], [20, 21, 22, 23, 1]]
    rows = [(p, c) for p, c in zip(prompts, chosen)] + [(p, r) for p, r in zip(prompts, rejected)]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)  # 0 = [PAD]
    attention_mask, completion_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(rows):
        input_ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attention_mask[i, :len(p) + len(c)] = 1
        completion_mask[i, len(p):len(p) + len(c)] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask)


def our_logps(model, inputs):
    """Summed completion log-probs of every row under `model`, with our sequence_logps: [2B]."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return sequence_logps(logits[:, :-1], inputs["input_ids"][:, 1:], inputs["completion_mask"][:, 1:])


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_loss_matches_trl(tmp_path, beta):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    model, ref = tiny_qwen2(seed=0).double(), tiny_qwen2(seed=1).double()
    trainer = DPOTrainer(model=model, ref_model=ref, processing_class=tiny_tokenizer(),
                         args=DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                                        bf16=False, beta=beta, loss_type="sigmoid"),
                         train_dataset=Dataset.from_dict({"prompt": ["w1"], "chosen": ["w2"], "rejected": ["w3"]}))
    inputs = dpo_batch()
    trl_loss, trl = call_capturing_locals(trainer._compute_loss, trainer.model, inputs, False)
    mode = "train" if trainer.model.training else "eval"
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    # the maths, on TRL's own summed log-probs
    losses, chosen_r, rejected_r = dpo_sigmoid_loss(trl["chosen_logps"], trl["rejected_logps"],
                                                    trl["ref_chosen_logps"], trl["ref_rejected_logps"], beta=beta)
    torch.testing.assert_close(losses, trl["per_sequence_loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(losses.mean(), trl_loss, rtol=0, atol=1e-6)
    assert chosen_r.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert rejected_r.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    assert (chosen_r - rejected_r).mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-6)
    assert (chosen_r > rejected_r).double().mean().item() == pytest.approx(metrics["rewards/accuracies"])

    # end to end from our log-probs of both models (TRL's sums of ~4 float32 log-probs: ~1e-6 apart)
    policy = our_logps(trainer.model, inputs)
    with torch.no_grad():
        reference = our_logps(ref, inputs)
    torch.testing.assert_close(policy, torch.cat([trl["chosen_logps"], trl["rejected_logps"]]).double(),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(reference, torch.cat([trl["ref_chosen_logps"], trl["ref_rejected_logps"]]).double(),
                               rtol=0, atol=1e-5)
    losses, _, _ = dpo_sigmoid_loss(*policy.chunk(2), *reference.chunk(2), beta=beta)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(losses.mean(), params), torch.autograd.grad(trl_loss, params)):
        torch.testing.assert_close(a, b.double(), rtol=1e-4, atol=1e-6)


def pair(chosen=-5.0, rejected=-6.0, ref_chosen=-5.5, ref_rejected=-5.5):
    return [torch.tensor([x], dtype=torch.float64) for x in (chosen, rejected, ref_chosen, ref_rejected)]


def test_loss_falls_as_chosen_rises_and_rejected_falls():
    by_chosen = [dpo_sigmoid_loss(*pair(chosen=c))[0].item() for c in (-8.0, -6.0, -4.0, -2.0)]
    by_rejected = [dpo_sigmoid_loss(*pair(rejected=r))[0].item() for r in (-8.0, -6.0, -4.0, -2.0)]
    assert by_chosen == sorted(by_chosen, reverse=True) and len(set(by_chosen)) == 4
    assert by_rejected == sorted(by_rejected) and len(set(by_rejected)) == 4


def test_values_rewards_and_gradient():
    losses, chosen_r, rejected_r = dpo_sigmoid_loss(*pair(-5.0, -5.0, -5.0, -5.0), beta=0.1)
    assert losses.item() == pytest.approx(math.log(2))  # no preference expressed yet
    c, r, rc, rr = pair()
    c.requires_grad_()
    losses, chosen_r, rejected_r = dpo_sigmoid_loss(c, r, rc, rr, beta=0.5)
    assert chosen_r.item() == pytest.approx(0.25) and rejected_r.item() == pytest.approx(-0.25)
    assert not chosen_r.requires_grad  # rewards are for logging
    logit = 0.5 * (0.5 - -0.5)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-logit))))
    (grad,) = torch.autograd.grad(losses.sum(), c)
    assert grad.item() == pytest.approx(-0.5 / (1 + math.exp(logit)))  # -beta * sigmoid(-logit)
    # only log-ratios matter: shifting a completion's policy and reference logps together changes nothing
    shifted = dpo_sigmoid_loss(*[x + s for x, s in zip(pair(), (3.0, -2.0, 3.0, -2.0))])[0]
    assert shifted.item() == pytest.approx(dpo_sigmoid_loss(*pair())[0].item())
    assert torch.isfinite(dpo_sigmoid_loss(*pair(chosen=-1e4, rejected=0.0), beta=1.0)[0]).all()


def test_label_smoothing_is_conservative_dpo():
    margins = torch.linspace(-6, 6, 121, dtype=torch.float64)  # beta * (chosen - rejected log-ratio)
    zeros = torch.zeros_like(margins)
    losses, _, _ = dpo_sigmoid_loss(margins, zeros, zeros, zeros, beta=1.0, label_smoothing=0.1)
    expected = -0.9 * torch.nn.functional.logsigmoid(margins) - 0.1 * torch.nn.functional.logsigmoid(-margins)
    torch.testing.assert_close(losses, expected)
    # the optimum is a finite margin, log(0.9 / 0.1), instead of +infinity
    assert margins[losses.argmin()].item() == pytest.approx(math.log(9), abs=0.05)
    half, _, _ = dpo_sigmoid_loss(margins, zeros, zeros, zeros, beta=1.0, label_smoothing=0.5)
    torch.testing.assert_close(half, half.flip(0))  # a coin-flip label: symmetric in the margin


def test_sequence_logps_sums_only_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 4, 7, generator=g, dtype=torch.float64), torch.randint(0, 7, (2, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    per_token = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), (per_token * mask).sum(-1))
    labels[1, 3] = -100  # ignored positions may carry -100
    assert sequence_logps(logits, labels, mask)[1].item() == pytest.approx(per_token[1, 2].item())
