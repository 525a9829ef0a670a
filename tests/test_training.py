"""The run loop on a toy model: exact resume, the checkpoint manifest, and falling back past damaged checkpoints."""

import json

import pytest
import torch

from searchrl.checkpoint import checkpoints, latest_valid_checkpoint, verify_checkpoint
from searchrl.config import OptimConfig, RunConfig
from searchrl.errors import UserError
from searchrl.training import RunLoop, build_optimizer, optimizer_step


def run_toy(out, total=6, stop=0, resume=False, save_every=2):
    """Fit y = 3x on a fixed stream with the run loop; returns (result, the weight)."""
    loop = RunLoop("toy", RunConfig(output_dir=str(out), device="cpu", progress=False, save_every=save_every,
                                    stop_at_step=stop, resume=resume))
    model = torch.nn.Linear(1, 1, bias=False)
    if loop.checkpoint is not None:
        model.load_state_dict(torch.load(loop.checkpoint / "weights.pt"))
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=0.1, schedule="cosine"), total)
    seen = loop.rank_state.get("seen", 0)

    def step(i):
        nonlocal seen
        x = torch.randn(8, 1)  # the global RNG: exact resume restores it
        loss = ((model(x) - 3 * x) ** 2).mean()
        loss.backward()
        _, lr = optimizer_step(optimizer, scheduler, 1.0)
        seen += 8
        return {"loss": float(loss), "lr": lr}

    def save(path):
        torch.save(model.state_dict(), path / "weights.pt")

    res = loop.fit(step, total, optimizer, scheduler, save, save_final=save, rank_state=lambda: {"seen": seen})
    return res, float(model.weight), seen


def test_stop_and_resume_equal_an_uninterrupted_run(tmp_path):
    full, w_full, seen_full = run_toy(tmp_path / "full")
    part, _, _ = run_toy(tmp_path / "part", stop=3)
    assert part.final_dir is None and [p.name for p in checkpoints(tmp_path / "part")] == ["checkpoint-2",
                                                                                            "checkpoint-3"]
    torch.manual_seed(99)
    resumed, w_res, seen_res = run_toy(tmp_path / "part", resume=True)
    assert resumed.step == 6 and w_res == pytest.approx(w_full, abs=1e-7) and seen_res == seen_full == 48
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_manifest_lists_every_file_and_detects_damage(tmp_path):
    run_toy(tmp_path, stop=4)
    ckpt = tmp_path / "checkpoint-4"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert set(manifest) == {"weights.pt", "trainer_state.pt"} and verify_checkpoint(ckpt) is None
    data = (ckpt / "weights.pt").read_bytes()
    (ckpt / "weights.pt").write_bytes(data[:-5])  # truncated
    assert "weights.pt" in verify_checkpoint(ckpt) and "truncated" in verify_checkpoint(ckpt)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (ckpt / "weights.pt").write_bytes(bytes(flipped))  # same size, one byte flipped
    assert "corrupted" in verify_checkpoint(ckpt)
    (ckpt / "weights.pt").unlink()
    assert "missing" in verify_checkpoint(ckpt)


def test_resume_falls_back_past_a_damaged_checkpoint_and_refuses_when_none_is_left(tmp_path):
    full, w_full, _ = run_toy(tmp_path / "full")
    run_toy(tmp_path / "part", stop=4)
    newest = tmp_path / "part" / "checkpoint-4" / "trainer_state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # as if the disk filled up while it was written
    with pytest.warns(UserWarning, match=r"checkpoint-4.*trainer_state.pt"):
        assert latest_valid_checkpoint(tmp_path / "part").name == "checkpoint-2"
    with pytest.warns(UserWarning):
        resumed, w_res, _ = run_toy(tmp_path / "part", resume=True)
    assert resumed.step == 6 and w_res == pytest.approx(w_full, abs=1e-7)  # from checkpoint-2: the same result
    for p in checkpoints(tmp_path / "part"):  # every checkpoint incomplete: resuming must not start over
        (p / "manifest.json").unlink()
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no valid checkpoint"):
        run_toy(tmp_path / "part", resume=True)


def test_a_half_written_checkpoint_directory_is_never_used(tmp_path):
    run_toy(tmp_path, stop=2)
    (tmp_path / "checkpoint-4.tmp").mkdir()  # a crash during a write leaves only the .tmp directory
    (tmp_path / "checkpoint-4.tmp" / "weights.pt").write_bytes(b"half")
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"]
    assert latest_valid_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_non_finite_gradient_stops_before_the_weights_change():
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=0.1), 10)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.tensor([[float("nan"), 1.0]])).sum()).backward()
    with pytest.raises(FloatingPointError, match="step 3"):
        optimizer_step(optimizer, scheduler, 1.0, "step 3")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
