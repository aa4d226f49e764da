"""The recipe knobs (weight decay, schedule, augmentation), and the reference recipe left as it was."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_compare import models, recipes, training
from fashion_compare.params import TrainConfig

REPO = Path(__file__).resolve().parent.parent
# The last commits before the recipe knobs and before models were data: their training of the reference recipe
# is the one to keep.
BEFORE_RECIPES, BEFORE_CONTENDERS = "b7144d1", "5f599bc"


def config(**changes):
    values = dict(model="cnn", architecture="fashion_cnn", options={}, optimizer="adam", label_smoothing=0.0,
                  precision="fp32", lr=0.001, epochs=4, batch_size=50, weight_decay=0.0, schedule="constant",
                  step_size=None, gamma=0.1, augment="none", seed=3, device="cpu",
                  channels_last=False, eval_batch_size=100)
    values.update(changes)
    return TrainConfig(**values)


def test_optimizer_and_schedule_follow_the_recipe():
    parameters = [torch.nn.Parameter(torch.zeros(3))]
    cpu = torch.device("cpu")
    assert type(recipes.make_optimizer(parameters, config(), cpu)) is torch.optim.Adam
    adamw = recipes.make_optimizer(parameters, config(optimizer="adamw", weight_decay=0.01), cpu)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.01
    sgd = recipes.make_optimizer(parameters, config(optimizer="sgd", weight_decay=0.0005), cpu)
    group = sgd.param_groups[0]
    assert type(sgd) is torch.optim.SGD and (group["momentum"], group["nesterov"], group["weight_decay"]) == \
        (0.9, True, 0.0005)
    assert recipes.make_scheduler(adamw, config(), 10) is None
    rates = []
    for schedule, extra in (("step", {"step_size": 2}), ("cosine", {})):
        optimizer = recipes.make_optimizer([torch.nn.Parameter(torch.zeros(3))], config(), cpu)
        scheduler = recipes.make_scheduler(optimizer, config(schedule=schedule, **extra), 10)
        lrs = []
        for _ in range(4):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates.append(lrs)
    assert rates[0] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert rates[1][0] == pytest.approx(1e-3) and rates[1] == sorted(rates[1], reverse=True)
    assert rates[1][2] == pytest.approx(5e-4)  # half way through the cosine
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)  # ends at 0


def test_augmentation_flips_and_shifts_whole_pixels_and_repeats_with_its_seed():
    images = torch.rand(64, 1, 28, 28)
    flipped = recipes.augment_batch(images, "flip", torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(flipped, images)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, images)]
    assert all(s or m for s, m in zip(same, mirrored)) and 16 < sum(mirrored) < 48
    shifted = recipes.augment_batch(images, "flip_translate", torch.Generator().manual_seed(1))
    for augmented, image in zip(shifted, images):  # a whole-pixel shift (and maybe a flip): the same values
        candidates = [torch.roll(version, (dy, dx), (-2, -1)) for version in (image, image.flip(-1))
                      for dy in range(-2, 3) for dx in range(-2, 3)]
        inner = (slice(None), slice(2, -2), slice(2, -2))
        assert any(torch.allclose(augmented[inner], c[inner], atol=1e-5) for c in candidates)
    again = recipes.augment_batch(images, "flip_translate_rotate", torch.Generator().manual_seed(2))
    assert torch.equal(again, recipes.augment_batch(images, "flip_translate_rotate",
                                                     torch.Generator().manual_seed(2)))
    assert again.shape == images.shape and not torch.equal(again, shifted)
    assert 0 <= again.min() and again.max() <= 1 + 1e-6


def test_random_erasing_zeroes_one_rectangle_in_about_half_the_images_after_the_same_shift():
    images = torch.rand(400, 1, 28, 28) + 0.5  # no pixel is 0 before erasing
    erased = recipes.augment_batch(images, "flip_translate_erase", torch.Generator().manual_seed(3))
    shifted = recipes.augment_batch(images, "flip_translate", torch.Generator().manual_seed(3))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the zeros a shift brings in
    zeros = erased[inner] == 0
    hit = zeros.flatten(1).any(1)
    assert 150 < hit.sum() < 250  # probability 1/2 per image
    kept = ~zeros
    assert torch.equal(erased[inner][kept], shifted[inner][kept])  # the same draws of flip and shift
    mask = recipes.erase_mask(400, 28, 28, torch.Generator().manual_seed(4))[:, 0]
    for image_mask in mask[:50]:  # one rectangle: its zeros fill their bounding box, 2-33 % of the image
        rows, columns = torch.nonzero(image_mask == 0, as_tuple=True)
        if len(rows):
            box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
            assert box == len(rows) and 0.015 * 784 <= len(rows) <= 0.34 * 784


def test_augmented_training_repeats_and_resumes_bit_for_bit(real_raw, tmp_path):
    from fashion_compare import data

    splits = data.prepare(*real_raw, 0.25, 400, seed=0)
    cfg = config(epochs=2, augment="flip_translate_rotate", weight_decay=0.01, schedule="cosine")

    class StopAfterFirstEpoch:
        def on_epoch(self, record, steps):
            raise KeyboardInterrupt

    def weights(resume=None, state=None, observers=()):
        training.seed_everything(cfg.seed)
        model = models.build_model("fashion_cnn")
        result = training.train(model, splits["train"], splits["val"], cfg, torch.device("cpu"), quiet=True,
                                resume=resume, state=state, observers=observers)
        return {k: v.clone() for k, v in model.state_dict().items()}, result

    whole, _ = weights()
    resume = training.ResumeFile(tmp_path / "state.pt", "fp")
    with pytest.raises(KeyboardInterrupt):  # cut short after one epoch, then go on from it
        weights(resume=resume, observers=[StopAfterFirstEpoch()])
    resumed, result = weights(state=resume.load())
    assert result.resumed_from_epoch == 1
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    plain = config(epochs=2, weight_decay=0.01, schedule="cosine")
    training.seed_everything(plain.seed)
    model = models.build_model("fashion_cnn")
    training.train(model, splits["train"], splits["val"], plain, torch.device("cpu"), quiet=True)
    assert not torch.equal(model.state_dict()["features.0.weight"], whole["features.0.weight"])  # augmented


REFERENCE_SCRIPT = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import torch
from fashion_compare import data, models, training
from fashion_compare.params import load_params, train_config
raw = data.load_raw("/nonexistent", fetch=None)
splits = data.prepare(raw[0], raw[1], 0.25, 400, seed=0)
params = load_params(sys.argv[2])
digests = {}
for name in ("resnet", "cnn"):
    config = train_config(params, name).model_copy(update={"epochs": 2, "device": "cpu"})
    if name == "resnet":
        config = config.model_copy(update={"step_size": 1})
    training.seed_everything(config.seed)
    model = (models.build_model(config.architecture, config.options) if hasattr(config, "architecture")
             else models.build_model(name))  # the code before models were data built by name
    result = training.train(model, splits["train"], splits["val"], config, torch.device("cpu"), quiet=True)
    model.load_state_dict(result.best_state)
    with torch.inference_mode():
        predictions = model.eval()(splits["test"]["images"][:500]).argmax(1)
    digests[name] = hashlib.sha256(predictions.numpy().tobytes()
                                   + b"".join(v.numpy().tobytes() for v in result.best_state.values())).hexdigest()
print(json.dumps(digests))
"""


def reference_digests(src: Path, params: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, str(src), str(params)], capture_output=True,
                            text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.long
@pytest.mark.parametrize("commit", [BEFORE_RECIPES, BEFORE_CONTENDERS])
def test_reference_recipe_trains_as_before_the_recipe_knobs(real_raw, tmp_path, commit):
    """The default recipe (Adam, StepLR for ResNet18, no augmentation) gives the same weights and predictions,
    bit for bit, as the code of the commit before the knobs, and of the one before models were data, on this
    machine: ResNet18 with its StepLR firing, and the CNN."""
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO).returncode != 0:
        pytest.skip(f"this clone lacks commit {commit} (a shallow clone)")
    old = tmp_path / "before"
    archive = subprocess.run(["git", "archive", commit, "src", "params.yaml"], cwd=REPO, capture_output=True,
                             check=True).stdout
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    before = reference_digests(old / "src", old / "params.yaml")
    now = reference_digests(REPO / "src", REPO / "params.yaml")
    assert now == before


def test_one_cycle_warms_up_then_anneals_every_batch_and_stopping_early_follows_the_same_schedule():
    optimizer = recipes.make_optimizer([torch.nn.Parameter(torch.zeros(3))], config(), torch.device("cpu"))
    scheduler = recipes.make_scheduler(optimizer, config(schedule="one_cycle", epochs=4), steps_per_epoch=5)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(1e-3) and 0 < peak < 19
    assert rates[:peak + 1] == sorted(rates[:peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)


@pytest.fixture(scope="module")
def tiny_splits(real_raw):
    from fashion_compare import data

    return data.prepare(*real_raw, 0.25, 400, seed=0)


def train_cnn(splits, cfg, **kwargs):
    training.seed_everything(cfg.seed)
    model = models.build_model(cfg.architecture, cfg.options)
    return model, training.train(model, splits["train"], splits["val"], cfg, torch.device("cpu"), quiet=True,
                                 **kwargs)


def test_label_smoothing_and_bf16_change_the_training_and_repeat_with_the_seed(tiny_splits):
    _, plain = train_cnn(tiny_splits, config(epochs=1))
    _, smoothed = train_cnn(tiny_splits, config(epochs=1, label_smoothing=0.1))
    _, bf16 = train_cnn(tiny_splits, config(epochs=1, precision="bf16"))
    _, bf16_again = train_cnn(tiny_splits, config(epochs=1, precision="bf16"))
    losses = lambda result: [step[2] for step in result.steps]  # noqa: E731
    assert losses(smoothed) != losses(plain) and losses(bf16) != losses(plain)
    assert losses(bf16) == losses(bf16_again)


def test_a_run_stopped_at_a_rung_goes_on_to_the_same_weights(tiny_splits, tmp_path):
    """until_epoch (a search's rung): stopped after 2 of 4 epochs of a one-cycle SGD recipe, then resumed from
    its saved state, it ends where a run of all 4 epochs ends, bit for bit."""
    cfg = config(epochs=4, schedule="one_cycle", optimizer="sgd", weight_decay=0.0005, lr=0.05)
    _, whole = train_cnn(tiny_splits, cfg)
    resume = training.ResumeFile(tmp_path / "state.pt", "fingerprint")
    _, first = train_cnn(tiny_splits, cfg, resume=resume, until_epoch=2)
    assert len(first.epochs) == 2
    _, rest = train_cnn(tiny_splits, cfg, resume=resume, state=resume.load())
    assert rest.resumed_from_epoch == 2 and len(rest.epochs) == 4
    assert [r.val_accuracy for r in rest.epochs] == [r.val_accuracy for r in whole.epochs]
    for key, tensor in whole.best_state.items():
        assert torch.equal(tensor, rest.best_state[key]), key
