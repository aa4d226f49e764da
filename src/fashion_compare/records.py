"""What each stage records in MLflow: its params, metrics, reports and figures, as MLflow keys and artifacts.

tracking.py is the connection and the run life cycle; this module knows the shapes of the stages' results
(evaluation.py's metrics, results.py's Comparison and StudyResult) and turns them into MLflow records. Nothing
here shapes a stage's outputs (dvc.yaml leaves it out of the deps, as tracking.py).
"""

import dataclasses
import time

from .process import signals_deferred
from .tracking import Tracker


def training_params(config, device, data_settings, train_size: int, parameter_count: int) -> dict:
    """A training run's params: its config (the device it resolved to) and what else shaped it."""
    import platform

    import torch

    settings = config.model_dump()
    options = {f"options.{key}": value for key, value in settings.pop("options").items()}
    return {**settings, **options, "device": str(device), "val_fraction": data_settings.val_fraction,
            "subset": data_settings.subset, "train_size": train_size, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "parameter_count": parameter_count}


def log_training_end(tracker: Tracker, run_id, name: str, model, result, example, settings,
                     stage_started: float) -> dict:
    """At the end of a training: the model (MLflow's PyTorch flavour, stock modules, best weights; registered
    when `settings.register_model`) and the run's last metrics. Returns what the stage's metrics file adds:
    the model's URI and the time spent talking to MLflow."""
    from .cpu_speedups import to_stock

    added = {}
    if settings.log_model:
        model.load_state_dict(result.best_state)
        registered = f"fashion-mnist-{name}" if settings.register_model else None
        added["mlflow_model_uri"] = log_model(tracker, run_id, to_stock(model), example, registered)
    tracker.log_metrics(run_id, {"best_val_accuracy": result.best_val_accuracy, "train_seconds": result.train_seconds})
    added.update(tracking_seconds=tracker.seconds, tracking_metrics_seconds=result.observer_seconds,
                 tracking_overhead=tracker.seconds / (time.perf_counter() - stage_started))
    return added


def metric_key(name: str) -> str:
    """A class name as a readable MLflow metric key part: 'T-shirt/top' -> 'T-shirt_top'."""
    return name.replace("/", "_").replace(" ", "_")


def evaluation_metrics(result: dict) -> dict:
    """A model's test metrics as MLflow metric keys (test_accuracy, test_f1_macro, test_f1_Ankle_boot, ...)."""
    from . import CLASS_NAMES, PER_CLASS_METRICS

    values = {"test_accuracy": result["accuracy"], "test_latency_ms_per_image": result["latency_ms_per_image"]}
    for average in ("macro_avg", "weighted_avg"):
        for metric in PER_CLASS_METRICS:
            values[f"test_{metric}_{average.split('_')[0]}"] = result[average][metric]
    for name in CLASS_NAMES:
        for metric in PER_CLASS_METRICS:
            values[f"test_{metric}_{metric_key(name)}"] = result["per_class"][name][metric]
    return values


def log_evaluation(tracker: Tracker, run_id, title: str, result: dict, y_true, y_pred):
    """Add a model's test metrics, classification report and confusion matrix to its training run (`title`: the
    model's, params.yaml's)."""
    from . import plots
    from .evaluation import report_text

    tracker.log_metrics(run_id, evaluation_metrics(result))
    tracker.log_text(run_id, report_text(y_true, y_pred), "evaluation/classification_report.txt")
    tracker.log_dict(run_id, {k: v for k, v in result.items() if k != "mlflow_run_id"},
                     "evaluation/classification_report.json")
    figure = plots.confusion_figure(result["confusion_matrix"], f"{title}: test confusion matrix")
    tracker.log_figure(run_id, figure, "evaluation/confusion_matrix.png")
    plots.close(figure)


def comparison_run_params(child_params: dict, compare_settings: dict, seed) -> dict:
    """The params of a comparison's parent run: what shaped the comparison (`compare.*`, the seed) and the
    children's params, once where the models agree and prefixed with the model where they differ
    (`<model>.batch_size`), so that a grid of experiments sorts in the runs list. `child_params`: {model: its run's
    params}, every compared model's; with a model missing, the children's params are left out."""
    merged = {}
    compared = [compare_settings["baseline"], *compare_settings["contenders"]]
    if set(child_params) == set(compared):
        for key in sorted(set().union(*child_params.values())):
            values = {name: child_params[name].get(key) for name in compared}
            if len(set(values.values())) == 1:
                merged[key] = values[compared[0]]
            else:
                merged.update({f"{name}.{key}": value for name, value in values.items()})
    settings = {**compare_settings, "contenders": " ".join(compare_settings["contenders"])}
    return {**merged, **{f"compare.{k}": v for k, v in settings.items()}, "seed": seed}


def comparison_metrics(verdict) -> dict:
    """A run's verdict (results.ComparisonVerdict) as MLflow metrics: its numbers (gains, ratios, the rule's
    bounds and p-values), the gains' interval bounds, McNemar's b, c and p."""
    values = {field.name: float(getattr(verdict, field.name)) for field in dataclasses.fields(verdict)
              if type(getattr(verdict, field.name)) in (int, float)}
    values.update({"mcnemar_p": verdict.mcnemar.p_value, "mcnemar_b": verdict.mcnemar.b,
                   "mcnemar_c": verdict.mcnemar.c})
    values["accuracy_gain_lower"], values["accuracy_gain_upper"] = verdict.accuracy_gain_ci
    values["macro_f1_gain_lower"], values["macro_f1_gain_upper"] = verdict.macro_f1_gain_ci
    return values


def log_comparison(tracker: Tracker, run_id, child_run_ids: dict, figures, summary: str, result):
    """The comparison (results.Comparison): each contender's metrics (prefixed with its name), figures and summary
    in its run; the models' runs become its children."""
    for name, contender in result.contenders.items():
        tracker.log_metrics(run_id, {f"{name}.{key}": value
                                     for key, value in comparison_metrics(contender.verdict).items()})
    tracker.set_tags(run_id, {f"verdict.{name}": c.verdict.decision for name, c in result.contenders.items()})
    for path in figures:
        tracker.log_artifact(run_id, path, "comparison")
    tracker.log_text(run_id, summary, "comparison/SUMMARY.md")
    tracker.log_dict(run_id, dataclasses.asdict(result), "comparison/compare.json")
    for child in child_run_ids.values():
        tracker.set_tags(child, {"mlflow.parentRunId": run_id, "compare_run_id": run_id})


def study_run_params(study, shared_params: dict, compare_settings) -> dict:
    """The params of a study's run: its seeds, the params every seed shares, and the verdict's settings."""
    settings = {**compare_settings.model_dump(), "baseline": study.baseline, "contenders": " ".join(study.contenders)}
    return {"seeds": " ".join(map(str, study.seeds)), "k": study.k, **shared_params,
            **{f"compare.{k}": v for k, v in settings.items()}}


def contender_metrics(contender) -> dict:
    """A contender's numbers over the seeds (results.ContenderStudy) as MLflow metrics."""
    gain, verdict = contender.accuracy_gain, contender.verdict
    values = {"accuracy_gain_mean": gain.mean, "accuracy_gain_lower": gain.ci[0],
              "accuracy_gain_upper": gain.ci[1], "accuracy_gain_se": gain.se, "accuracy_gain_df": gain.df,
              "accuracy_gain_se_seeds": gain.se_seeds, "accuracy_gain_se_images": gain.se_images,
              "accuracy_gain_se_interaction": gain.se_interaction,
              **{f"accuracy_gain_variance_{k}": v for k, v in dataclasses.asdict(gain.variance_components).items()},
              "margin_one_sided_lower": verdict.lower, "margin_one_sided_upper": verdict.upper,
              "p_gain_at_least_margin": verdict.p_gain_at_least_margin,
              "p_null_gain_at_most_margin": verdict.p_null_gain_at_most_margin,
              **({"train_time_ratio_median": contender.train_time_ratio.median} if contender.train_time_ratio
                 else {}),
              "p_better": contender.p_better.value,
              **({"aso_epsilon_min": contender.aso_epsilon_min} if contender.aso_epsilon_min is not None else {}),
              **{f"verdict_{d.replace(' ', '_')}": float(verdict.decision == d)
                 for d in ("worth it", "not worth it", "undecided")}}
    if verdict.plan and verdict.plan.planned_k:
        values["planned_k"] = verdict.plan.planned_k
    return values


def study_metrics(study) -> dict:
    """A study's numbers (results.StudyResult) as MLflow metrics: each contender's prefixed with its name."""
    values = {"k": study.k}
    for name, contender in study.contenders.items():
        values.update({f"{name}.{key}": value for key, value in contender_metrics(contender).items()})
    for model, entry in study.models.items():
        values.update({f"{model}_test_accuracy_{k}": v for k, v in dataclasses.asdict(entry.test_accuracy).items()
                       if isinstance(v, float)})
    return values


def log_study(tracker: Tracker, run_id, study, figures, summary: str):
    """The study's metrics, figures and summary in its run; every seed's runs tagged with the study and their
    seed (the runs list groups by it), each seed's comparison run a child of the study's run."""
    tracker.set_tags(run_id, {f"verdict.{name}": c.verdict.decision for name, c in study.contenders.items()})
    tracker.log_metrics(run_id, study_metrics(study))
    for path in figures:
        tracker.log_artifact(run_id, path, "study")
    tracker.log_text(run_id, summary, "study/SUMMARY.md")
    tracker.log_dict(run_id, dataclasses.asdict(study), "study/study.json")
    for row in study.per_seed:
        for role, child in (row.run.mlflow_run_ids.items() if row.run else ()):
            if not child or not tracker.has_run(child):
                continue
            tags = {"study_run_id": run_id, "seed": row.seed}
            if role == "compare":
                tags["mlflow.parentRunId"] = run_id
            tracker.set_tags(child, tags)


def log_model(tracker: Tracker, run_id, model, example, registered_name=None) -> str:
    """Log with MLflow's PyTorch flavour (its time counts in `tracker.seconds`): signature and input example
    (N x 1 x 28 x 28 float32).
    mlflow.pytorch.log_model takes no run id: it logs into the fluent API's active run."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    # Contiguous weights: a channels_last model (the CNN) made torch.export's archive writer warn
    # "No complete tensor found in the group!" for every non-contiguous weight.
    started = time.perf_counter()
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    mlflow.set_tracking_uri(tracker.uri)  # the fluent API's store (MLflow also exports it to the environment)
    with signals_deferred(), mlflow.start_run(run_id=run_id, nested=False):
        # Explicit requirements: MLflow's inference of them costs ~10 s per model.
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
        info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                        pip_requirements=requirements,
                                        registered_model_name=registered_name)
    tracker.seconds += time.perf_counter() - started
    return info.model_uri
