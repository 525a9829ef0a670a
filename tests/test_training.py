"""The run loop on a toy model: exact resume, the checkpoint manifest, and falling back past damaged checkpoints."""

import dataclasses
import json

import pytest
import torch

from searchrl.checkpoint import checkpoints, latest_valid_checkpoint, verify_checkpoint
from searchrl.config import OptimConfig, RunConfig
from searchrl.errors import UserError
from searchrl.training import RunLoop, build_optimizer, optimizer_step


@dataclasses.dataclass
class ToyConfig:
    lr: float = 0.1
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


def run_toy(out, total=6, stop=0, resume=False, save_every=2, best_metric="", history=None, config=None,
            resume_ignores=()):
    """Fit y = 3x on a fixed stream with the run loop; returns (result, the weight, examples seen).
    With ``best_metric`` an eval after every step scores -|step - 3| under that name (the best is step 3) and
    ``history`` gets each step's weight; ``config`` is saved with the checkpoints."""
    loop = RunLoop("toy", RunConfig(output_dir=str(out), device="cpu", progress=False, save_every=save_every,
                                    stop_at_step=stop, resume=resume), config, resume_ignores)
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

    def evaluate():
        done = int(scheduler.last_epoch)
        history[done] = float(model.weight)
        return {"valid_peak": -abs(done - 3)}

    res = loop.fit(step, total, optimizer, scheduler, save, save_final=save, rank_state=lambda: {"seen": seen},
                   **({"evaluate": evaluate, "eval_every": 1, "best_metric": best_metric, "model": model}
                      if best_metric else {}))
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


def test_best_metric_gives_final_the_best_evals_weights_across_a_resume(tmp_path):
    history = {}
    res, w, _ = run_toy(tmp_path / "a", best_metric="valid_peak", history=history)
    assert history[3] != history[6]  # the weights moved after the best eval
    assert w == pytest.approx(history[3], abs=1e-7)  # the returned model is the best one, and so is final/
    assert float(torch.load(res.final_dir / "weights.pt")["weight"]) == pytest.approx(history[3], abs=1e-7)
    assert json.loads((res.final_dir / "best.json").read_text())["step"] == 3 and res.last_eval == {"valid_peak": 0}
    # killed after the best eval, resumed: best/ on disk still wins over the later steps
    run_toy(tmp_path / "b", stop=4, best_metric="valid_peak", history={})
    res_b, w_b, _ = run_toy(tmp_path / "b", resume=True, best_metric="valid_peak", history={})
    assert w_b == pytest.approx(history[3], abs=1e-7) and res_b.last_eval == {"valid_peak": 0}
    # a fresh run in the same directory forgets the old best
    run_toy(tmp_path / "b", stop=2, best_metric="valid_peak", history={})
    assert json.loads((tmp_path / "b" / "best" / "best.json").read_text())["step"] == 2


def test_best_metric_must_name_an_eval_metric_of_the_split(tmp_path):
    from searchrl.config import EvalConfig
    from searchrl.errors import ConfigError
    with pytest.raises(ConfigError, match="eval.every"):
        EvalConfig(best_metric="valid_good_auc")
    with pytest.raises(ConfigError, match="valid_good_auc"):
        EvalConfig(best_metric="test_good_auc", every=5)  # another split's name
    with pytest.raises(ConfigError, match="not an eval metric"):
        EvalConfig(best_metric="valid_auc", every=5)  # a typo fails at load
    assert EvalConfig(split="test", best_metric="test_macro_f1", every=5).best_metric == "test_macro_f1"
    with pytest.raises(ConfigError, match="not among this eval's metrics"):
        run_toy(tmp_path, best_metric="valid_auc", history={})  # the eval reports valid_peak only


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


def test_a_checkpoint_saved_under_another_config_is_refused(tmp_path):
    """Resuming another config's checkpoint would finish another model: refused, naming the field; a change in
    where and how the run writes, or in a field the trainer says training never reads, resumes."""
    run_toy(tmp_path, stop=3, config=ToyConfig(lr=0.1))
    with pytest.raises(UserError, match=r"another config \(lr: 0.1 -> 0.2\)"):
        run_toy(tmp_path, resume=True, config=ToyConfig(lr=0.2))
    resumed, _, _ = run_toy(tmp_path, resume=True, config=ToyConfig(lr=0.2), resume_ignores=("lr",))
    assert resumed.step == 6
    run_toy(tmp_path / "b", stop=3, config=ToyConfig(run=RunConfig(save_every=2)))
    resumed, _, _ = run_toy(tmp_path / "b", resume=True, config=ToyConfig(run=RunConfig(save_every=5)))
    assert resumed.step == 6


def test_a_moved_run_directory_resumes_with_the_paths_it_holds(tmp_path):
    """The checkpoint's config names files beside the run (its data): moved together, they are the same run."""
    @dataclasses.dataclass
    class WithData:
        data_dir: str
        run: RunConfig = dataclasses.field(default_factory=RunConfig)
    old, new = tmp_path / "old", tmp_path / "new"
    def config(home, data):
        return WithData(data_dir=str(data), run=RunConfig(output_dir=str(home / "out")))
    run_toy(old / "out", stop=3, config=config(old, old / "data"))
    old.rename(new)
    resumed, _, _ = run_toy(new / "out", resume=True, config=config(new, new / "data"))
    assert resumed.step == 6
    run_toy(tmp_path / "c" / "out", stop=3, config=config(tmp_path / "c", tmp_path / "c" / "data"))
    with pytest.raises(UserError, match="data_dir"):  # other data is another model
        run_toy(tmp_path / "c" / "out", resume=True, config=config(tmp_path / "c", tmp_path / "other"))
