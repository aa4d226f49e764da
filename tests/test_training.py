import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_compare import data, models, training
from fashion_compare.params import TrainConfig


def config(**changes):
    values = dict(model="cnn", architecture="fashion_cnn", options={}, optimizer="adam", label_smoothing=0.0,
                  precision="fp32", lr=0.001, epochs=2, batch_size=50, weight_decay=0.0, schedule="step", step_size=1,
                  gamma=0.5, augment="none", seed=3, device="cpu", channels_last=False,
                  eval_batch_size=100)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def small_splits(real_raw):
    return data.prepare(*real_raw, 0.25, 800, seed=0)


def run(splits, cfg, observers=()):
    training.seed_everything(cfg.seed)
    model = models.build_model(cfg.architecture, cfg.options)
    result = training.train(model, splits["train"], splits["val"], cfg, torch.device("cpu"), observers=observers,
                            quiet=True)
    return model, result


def test_training_learns_and_records_curves(small_splits):
    seen = []

    class Recorder:
        def on_epoch(self, record, steps):
            seen.append((record.epoch, len(steps)))

    cfg = config(epochs=3)
    _, result = run(small_splits, cfg, [Recorder()])
    steps_per_epoch = -(-600 // cfg.batch_size)
    assert seen == [(1, steps_per_epoch), (2, steps_per_epoch), (3, steps_per_epoch)]
    assert [s[0] for s in result.steps] == list(range(1, 3 * steps_per_epoch + 1))
    assert [r.lr for r in result.epochs] == pytest.approx([0.001, 0.0005, 0.00025])  # StepLR(1, 0.5)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.best_val_accuracy == max(r.val_accuracy for r in result.epochs) > 0.5  # chance is 0.1
    assert result.best_epoch == max(result.epochs, key=lambda r: r.val_accuracy).epoch


@pytest.mark.parametrize("model,channels_last,batch_size",
                         [("cnn", False, 50), ("cnn", True, 50), ("resnet", False, 20)])
def test_training_is_deterministic_for_a_seed(small_splits, model, channels_last, batch_size):
    """ResNet18 with its CPU paths (single-output convolutions, Adam on the live taps) included."""
    architecture = {"cnn": ("fashion_cnn", {}), "resnet": ("resnet18", {"stem": "imagenet"})}[model]
    cfg = config(model=model, architecture=architecture[0], options=architecture[1], epochs=1,
                 channels_last=channels_last, batch_size=batch_size)
    _, first = run(small_splits, cfg)
    _, second = run(small_splits, cfg)
    _, other_seed = run(small_splits, cfg.model_copy(update={"seed": 4}))
    assert [s[2] for s in first.steps] == [s[2] for s in second.steps]
    assert first.epochs[0].val_accuracy == second.epochs[0].val_accuracy
    assert [s[2] for s in first.steps] != [s[2] for s in other_seed.steps]
    for key, tensor in first.best_state.items():
        assert torch.equal(tensor, second.best_state[key]), key


def test_checkpoint_keeps_best_state_and_config(tmp_path, small_splits):
    from fashion_compare.files import save_torch

    cfg = config(epochs=1, model="cnn", channels_last=True)
    model, result = run(small_splits, cfg)
    path = tmp_path / "cnn.pt"
    save_torch(path, training.checkpoint(result, cfg, models.parameter_count(model)))
    loaded, saved = models.load_checkpoint(path)
    assert saved["config"] == cfg.model_dump(exclude={"eval_batch_size"}) and saved["best_epoch"] == 1
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, result.best_state[key])
    accuracy = training.loss_and_accuracy(loaded, small_splits["val"]["images"], small_splits["val"]["labels"],
                                          100, torch.device("cpu"))[1]
    assert accuracy == pytest.approx(result.best_val_accuracy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: device cuda is valid here")
def test_device_cuda_without_a_gpu_is_refused_in_one_line_before_any_work(tmp_path):
    import yaml

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(repo / "stages/train.py"), "cnn"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert result.stderr == "error: device: 'cuda' requested but no CUDA GPU is available (use 'auto' or 'cpu')\n"
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_checkpoints_that_are_not_ours_are_one_line_errors(tmp_path):
    from fashion_compare.errors import DataError
    from fashion_compare.files import save_torch

    pickled = tmp_path / "pickled.pt"
    torch.save(models.build_model("fashion_cnn"), pickled)  # a whole pickled module: refused by weights_only loading
    with pytest.raises(DataError, match=f"{pickled}: not a readable checkpoint"):
        models.load_checkpoint(pickled)
    bare = tmp_path / "bare.pt"
    save_torch(bare, models.build_model("fashion_cnn").state_dict())
    with pytest.raises(DataError, match=f"{bare}: not a checkpoint of this project"):
        models.load_checkpoint(bare)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pickled.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"{truncated}: not a readable checkpoint"):
        models.load_checkpoint(truncated)


FAULTS_PER_STEP = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from fashion_compare import models, process, training
training.seed_everything(0)
model = models.build_model("fashion_cnn").train().to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(list(model.parameters()), lr=0.001, fused=True)
x = torch.rand(100, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (100,))
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
def faults_per_step():
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
default = faults_per_step()
applied = process.keep_freed_memory()
print(applied, default, faults_per_step())
"""


def test_keep_freed_memory_stops_the_page_faults_of_every_step():
    """glibc hands large freed blocks back to the kernel, so each CNN training step (batch 100) faults
    their pages in again; after keep_freed_memory (glibc on Linux) the heap keeps them. Measured in a fresh
    process (mallopt settings are global to a process): steps before the call, then steps after it."""
    src = str(Path(training.__file__).resolve().parents[1])
    applied, default, keep = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, src], capture_output=True,
                                            text=True, check=True).stdout.split()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert applied == "False"
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    assert applied == "True"
    assert float(default) > 1000  # thousands of 4 KiB pages faulted in again at every step
    assert float(keep) < float(default) / 5
