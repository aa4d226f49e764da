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


def recipe(params, model):
    return params["models"][model]["recipe"]


def test_model_section_overrides_top_level(tmp_path, defaults):
    recipe(defaults, "cnn")["lr"] = 0.01
    defaults["lr"] = 0.005
    params = load_params(write(tmp_path, yaml.safe_dump(defaults)))
    assert train_config(params, "cnn").lr == 0.01 and train_config(params, "resnet").lr == 0.005


@pytest.mark.parametrize("change, key, message", [
    (lambda p: p.update(lr=-0.1), "lr", "greater than 0"),
    (lambda p: p.update(lr=0), "lr", "greater than 0"),
    (lambda p: p.update(epochs=0), "epochs", "greater than 0"),
    (lambda p: p.update(epochs=201), "epochs", "less than or equal to 200"),
    (lambda p: recipe(p, "cnn").update(augment="mixup"), "models.cnn.recipe.augment", "Input should be"),
    (lambda p: recipe(p, "cnn").update(schedule="step"), "models.cnn.recipe", "schedule 'step' needs a step_size"),
    (lambda p: recipe(p, "resnet").update(weight_decay=-0.1), "models.resnet.recipe.weight_decay",
     "greater than or equal to 0"),
    (lambda p: recipe(p, "resnet").update(batch_size=0), "models.resnet.recipe.batch_size", "greater than 0"),
    (lambda p: recipe(p, "cnn").update(batch_size="many"), "models.cnn.recipe.batch_size", "valid integer"),
    (lambda p: p["data"].update(val_fraction=1.0), "data.val_fraction", "less than 1"),
    (lambda p: p["data"].update(val_fraction=0), "data.val_fraction", "greater than 0"),
    (lambda p: p.update(learning_rate=0.1), "learning_rate", "unknown key"),
    (lambda p: recipe(p, "cnn").update(dropout=0.5), "models.cnn.recipe.dropout", "unknown key"),
    (lambda p: p["models"].pop("resnet"), "(top level)", "compare: 'resnet' is not a model declared in models"),
    (lambda p: p["models"]["cnn"].pop("recipe"), "models.cnn.recipe", "missing key"),
    (lambda p: p["models"]["resnet"]["options"].update(stem="tiny"), "models.resnet", "options.stem: Input should be"),
    (lambda p: p["models"]["cnn"].update(options={"stem": "small"}), "models.cnn", "options.stem: Extra inputs"),
    (lambda p: p["models"]["cnn"].update(architecture="vgg"), "models.cnn", "unknown architecture 'vgg'"),
    (lambda p: p["models"].update({"Res-Net": p["models"]["resnet"]}), "models.Res-Net.[key]", "should match pattern"),
    (lambda p: recipe(p, "cnn").update(precision="fp16"), "models.cnn.recipe.precision", "'fp32' or 'bf16'"),
    (lambda p: recipe(p, "cnn").update(weight_decay=0.01), "models.cnn.recipe",
     "optimizer 'adam' takes no weight_decay"),
    (lambda p: recipe(p, "cnn").update(optimizer="rmsprop"), "models.cnn.recipe.optimizer", "Input should be"),
    (lambda p: p["compare"].update(contenders=[]), "compare.contenders", "at least 1 item"),
    (lambda p: p["compare"].update(contenders=["resnet", "resnet"]), "compare", "a model listed twice"),
    (lambda p: p["compare"].update(contenders=["cnn"]), "compare", "'cnn' is the baseline"),
    (lambda p: p["compare"].update(baseline="vgg"), "(top level)", "compare: 'vgg' is not a model declared"),
    (lambda p: p.update(device="tpu"), "device", "'auto', 'cpu' or 'cuda'"),
    (lambda p: p.update(lr=float("nan")), "lr", "finite number"),
    (lambda p: recipe(p, "cnn").update(lr=float("inf")), "models.cnn.recipe.lr", "finite number"),
    (lambda p: p.update(epochs=True), "epochs", "valid integer"),
    (lambda p: recipe(p, "resnet").update(epochs=2.5), "models.resnet.recipe.epochs", "valid integer"),
    (lambda p: p["data"].update(subset=50), "data.subset", "at least 100"),
    (lambda p: p["data"].update(subset=70000), "data.subset", "less than or equal to 60000"),
    (lambda p: p.update(threads=0), "threads", "'auto' or a number of threads"),
    # values DVC's `==` takes for the last run's (1 == 1.0 == True): refused, so they never pass as "up to date"
    (lambda p: p.update(epochs=1.0), "epochs", "valid integer"),
    (lambda p: recipe(p, "resnet").update(batch_size=20.0), "models.resnet.recipe.batch_size", "valid integer"),
    (lambda p: p.update(lr=True), "lr", "not a boolean"),
    (lambda p: recipe(p, "cnn").update(channels_last=1), "models.cnn.recipe.channels_last", "valid boolean"),
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


@pytest.mark.parametrize("change, key, message", [
    (lambda t: t.update(configurations=0), "tune.configurations", "greater than or equal to 1"),
    (lambda t: t["space"]["optimizer"].update(sgd={"lr": {"low": 0.01, "high": 0.001}}), "tune.space.optimizer.sgd.lr",
     "inverted range"),
    (lambda t: t["space"].update(weight_decay={"low": 0.01, "high": 0.01}), "tune.space.weight_decay",
     "empty or inverted"),
    (lambda t: t["space"]["optimizer"].update(adam={"lr": {"low": 0.01, "high": 0.1}}),
     "tune.space.optimizer.adam.[key]", "Input should be"),
    (lambda t: t.update(max_epochs=20), "tune", "max_epochs 20 is not min_epochs 1 times a power of reduction_factor"),
    (lambda t: t.update(models=["resnet", "vgg"]), "tune.models", "'vgg' is not a model declared"),
    (lambda t: t["space"].update(augment=["flip", "cutout"]), "tune.space.augment.1", "Input should be"),
    (lambda t: t["space"].update(batch_size=[]), "tune.space.batch_size", "at least 1 item"),
])
def test_the_searchs_params_are_checked_by_the_tuning_in_one_line(tmp_path, defaults, change, key, message):
    """`tune` shapes no pipeline output: params.py takes it as it is and tuning.py validates it."""
    from fashion_compare.tuning import tune_params

    change(defaults["tune"])
    path = write(tmp_path, yaml.safe_dump(defaults))
    with pytest.raises(ParamsError) as error:
        tune_params(load_params(path), path)
    text = str(error.value)
    assert text.startswith(f"{path}: {key}: ") and message in text and "\n" not in text


def test_the_small_stem_contender_is_declared_and_a_list_of_contenders_resolves(tmp_path, defaults):
    params = load_params("params.yaml")
    assert params.compare.models == ("resnet", "cnn")  # the contenders, then the baseline
    small = train_config(params, "resnet_small")
    assert (small.architecture, small.options) == ("resnet18", {"stem": "small"})
    assert train_config(params, "resnet").options == {"stem": "imagenet"}
    assert train_config(params, "cnn").options == {}
    defaults["compare"]["contenders"] = ["resnet", "resnet_small"]
    assert load_params(write(tmp_path, yaml.safe_dump(defaults))).compare.models == ("resnet", "resnet_small", "cnn")
