import pytest
import yaml

from fashion_compare.errors import ParamsError
from fashion_compare.params import load_params, train_config


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def defaults():
    return yaml.safe_load(open("params.yaml"))


def test_repository_params_are_valid_and_resolve_overrides():
    params = load_params("params.yaml")
    resnet, cnn = train_config(params, "resnet"), train_config(params, "cnn")
    assert (params.lr, resnet.batch_size, cnn.batch_size) == (0.001, 20, 100)
    assert (resnet.step_size, resnet.gamma, cnn.step_size) == (5, 0.1, None)
    assert (resnet.schedule, cnn.schedule) == ("step", "constant")  # the reference recipe
    assert resnet.weight_decay == cnn.weight_decay == 0 and resnet.augment == cnn.augment == "none"
    assert resnet.lr == cnn.lr == params.lr
    assert cnn.epochs == resnet.epochs == params.epochs == 10  # the design notes' experiment


def test_model_section_overrides_top_level(tmp_path, defaults):
    defaults["cnn"]["lr"] = 0.01
    defaults["lr"] = 0.005
    params = load_params(write(tmp_path, yaml.safe_dump(defaults)))
    assert train_config(params, "cnn").lr == 0.01 and train_config(params, "resnet").lr == 0.005


@pytest.mark.parametrize("change, key, message", [
    (lambda p: p.update(lr=-0.1), "lr", "greater than 0"),
    (lambda p: p.update(lr=0), "lr", "greater than 0"),
    (lambda p: p.update(epochs=0), "epochs", "greater than 0"),
    (lambda p: p.update(epochs=31), "epochs", "less than or equal to 30"),
    (lambda p: p["cnn"].update(augment="mixup"), "cnn.augment", "Input should be"),
    (lambda p: p["cnn"].update(schedule="step"), "cnn", "schedule 'step' needs a step_size"),
    (lambda p: p["resnet"].update(weight_decay=-0.1), "resnet.weight_decay", "greater than or equal to 0"),
    (lambda p: p["tune"].update(trials=0), "tune.trials", "greater than or equal to 1"),
    (lambda p: p["tune"]["space"].update(lr={"low": 0.01, "high": 0.001}), "tune.space.lr", "inverted range"),
    (lambda p: p["tune"]["space"].update(lr={"low": 0.01, "high": 0.01}), "tune.space.lr", "empty or inverted"),
    (lambda p: p["tune"]["space"].update(augment=["flip", "cutout"]), "tune.space.augment.1", "Input should be"),
    (lambda p: p["tune"]["space"].update(batch_size=[]), "tune.space.batch_size", "at least 1 item"),
    (lambda p: p["resnet"].update(batch_size=0), "resnet.batch_size", "greater than 0"),
    (lambda p: p["cnn"].update(batch_size="many"), "cnn.batch_size", "valid integer"),
    (lambda p: p["data"].update(val_fraction=1.0), "data.val_fraction", "less than 1"),
    (lambda p: p["data"].update(val_fraction=0), "data.val_fraction", "greater than 0"),
    (lambda p: p.update(learning_rate=0.1), "learning_rate", "unknown key"),
    (lambda p: p["cnn"].update(dropout=0.5), "cnn.dropout", "unknown key"),
    (lambda p: p.pop("resnet"), "resnet", "missing key"),
    (lambda p: p.update(device="tpu"), "device", "'auto', 'cpu' or 'cuda'"),
    (lambda p: p.update(lr=float("nan")), "lr", "finite number"),
    (lambda p: p["cnn"].update(lr=float("inf")), "cnn.lr", "finite number"),
    (lambda p: p.update(epochs=True), "epochs", "valid integer"),
    (lambda p: p["resnet"].update(epochs=2.5), "resnet.epochs", "valid integer"),
    (lambda p: p["data"].update(subset=50), "data.subset", "at least 100"),
    (lambda p: p["data"].update(subset=70000), "data.subset", "less than or equal to 60000"),
    (lambda p: p.update(threads=0), "threads", "'auto' or a number of threads"),
    # values DVC's `==` takes for the last run's (1 == 1.0 == True): refused, so they never pass as "up to date"
    (lambda p: p.update(epochs=1.0), "epochs", "valid integer"),
    (lambda p: p["resnet"].update(batch_size=20.0), "resnet.batch_size", "valid integer"),
    (lambda p: p.update(lr=True), "lr", "not a boolean"),
    (lambda p: p["cnn"].update(channels_last=1), "cnn.channels_last", "valid boolean"),
    (lambda p: p["tracking"].update(enabled=0), "tracking.enabled", "valid boolean"),
])
def test_invalid_params_name_the_key_in_one_line(tmp_path, defaults, change, key, message):
    change(defaults)
    path = write(tmp_path, yaml.safe_dump(defaults))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    text = str(error.value)
    assert text.startswith(f"{path}: {key}: ") and message in text and "\n" not in text


def test_unreadable_params_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ParamsError, match="line 2 not valid YAML"):
        load_params(write(tmp_path, "lr: 1\n  bad: [\n"))
    with pytest.raises(ParamsError, match="mapping"):
        load_params(write(tmp_path, "- 1\n"))


def test_params_check_command(tmp_path, defaults, capsys):
    """`python -m fashion_compare.params`, which `make repro` runs before `dvc repro`."""
    from fashion_compare.params import main

    assert main([str(write(tmp_path, yaml.safe_dump(defaults)))]) == 0
    defaults["epochs"] = True
    path = write(tmp_path, yaml.safe_dump(defaults))
    assert main([str(path)]) == 1
    assert capsys.readouterr().err == f"error: {path}: epochs: Input should be a valid integer\n"
