"""Running a seed study's seeds: each a DVC experiment of the committed code with only `seed` changed, and
each seed's results kept in git (metrics/study/seeds/<seed>/) as soon as it finishes.

With jobs 1, `dvc exp run --temp`, one seed after another; with more, `dvc exp run --queue` and
`dvc queue start -j <jobs>`, the workers sharing the cores (OMP_NUM_THREADS = cores / jobs), and a remainder
that cannot fill the workers alone with every core. A stage that ran before with the same params and code is
restored from DVC's run cache, not retrained. A seed whose folder matches the current params (but for the
seed and what does not shape predictions) and code is done: a study cut short, or split over machines, runs
only the seeds that are missing. The statistics over the seeds are in study.py.
"""

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from dvc import api as dvc_api

from . import MODEL_NAMES, PREDICTIONS_FILE, study
from .errors import PipelineError
from .files import read_csv_rows, read_json, write_csv, write_json, write_text
from .process import available_cores

SEEDS_DIR = Path("metrics/study/seeds")
PREDICTION_STAGES = ("prepare", "train_resnet", "train_cnn", "evaluate")  # what a seed's predictions depend on
SEED_METRICS = ("data", "train_resnet", "train_cnn", "evaluate", "compare", "headline")
POLL_SECONDS = 5


def tool_env(env=None) -> dict:
    """The environment for dvc and the stages it runs: this virtualenv's commands first on PATH (a stage's
    command is `python stages/...`)."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc_command(*args) -> list:
    """The virtualenv's dvc (beside this Python), whatever PATH says, with `args`."""
    return [str(Path(sys.executable).parent / "dvc"), *args]


def dvc(*args, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(dvc_command(*args), capture_output=True, text=True, env=tool_env(env))
    if check and result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


def git(*args) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def code_fingerprint() -> str:
    """What a seed's predictions depend on besides params: the code the DVC stages up to evaluate list as
    deps (a change there means DVC would rerun them too)."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    files = sorted({dep for name in PREDICTION_STAGES for dep in stages[name].get("deps", [])
                    if Path(dep).is_file() and dep.endswith(".py")})
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + Path(name).read_bytes())
    return digest.hexdigest()[:16]


def comparable(params: dict) -> dict:
    """Params as a study compares them: all but the seed and what may differ between machines."""
    return {k: v for k, v in study.flatten(params).items()
            if k not in study.IGNORED_PARAMS and not k.startswith(study.IGNORED_SECTIONS)}


def seed_dir(seed: int) -> Path:
    return SEEDS_DIR / str(seed)


def finished(seed: int, params: dict, fingerprint: str) -> bool:
    """The seed has results made with these params and this code."""
    folder = seed_dir(seed)
    if not (folder / "run.json").is_file() or not (folder / "predictions.csv").is_file():
        return False
    saved = read_json(folder / "run.json")
    saved_params = yaml.safe_load((folder / "params.yaml").read_text())
    return saved.get("code") == fingerprint and comparable(saved_params) == comparable(params)


def experiment_name(seed: int) -> str:
    return f"study-seed-{seed}"


def collect(seed: int, fingerprint: str, baseline: str):
    """Copy a finished experiment's metrics and per-image predictions into metrics/study/seeds/<seed>/.
    `baseline`: the commit the experiment ran from (DVC files the experiment under it)."""
    name = experiment_name(seed)
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    show = lambda path: git("show", f"{ref}:{path}")  # noqa: E731
    with dvc_api.open(PREDICTIONS_FILE, rev=ref, encoding="utf-8") as handle:  # from DVC's cache
        rows = [{"image": row["image"], "label": row["label"], **{m: row[f"{m}_predicted"] for m in MODEL_NAMES}}
                for row in csv.DictReader(handle)]
    folder = seed_dir(seed)
    for metric in SEED_METRICS:
        write_text(folder / f"{metric}.json", show(f"metrics/{metric}.json"))
    for model in MODEL_NAMES:
        write_text(folder / f"{model}_epochs.csv", show(f"plots/train/{model}_epochs.csv"))
    write_csv(folder / "predictions.csv", rows, ["image", "label", *MODEL_NAMES])
    write_text(folder / "params.yaml", show("params.yaml"))
    train = {m: json.loads(show(f"metrics/train_{m}.json")) for m in MODEL_NAMES}
    write_json(folder / "run.json", {
        "seed": seed, "experiment": name, "rev": git("rev-parse", ref).strip(), "baseline": baseline,
        "code": fingerprint, "cpu": cpu_model(), "cpu_kind": cpu_kind(),
        "threads": {m: train[m]["threads"] for m in MODEL_NAMES},
        "train_seconds": {m: train[m]["train_seconds"] for m in MODEL_NAMES},
        "mlflow_run_ids": {**{m: train[m]["mlflow_run_id"] for m in MODEL_NAMES},
                           "compare": json.loads(show("metrics/compare.json")).get("mlflow_run_id")}})
    (folder / "failed.json").unlink(missing_ok=True)


def cpu_model() -> str:
    return cpu_kind()["name"]


VECTOR_ISAS = (("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


def cpu_kind() -> dict:
    """What a seed's results depend on of the CPU (they are bit-identical per CPU kind and thread count, not
    across kinds): vendor, family and model numbers, the widest vector ISA, and the model name. The name
    alone is not enough: "AMD EPYC" is what virtual machines of at least three kinds that round
    differently report."""
    fields = {}
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    isa = next((title for flag, title in VECTOR_ISAS if flag in flags), "unknown")
    import platform

    return {"vendor": fields.get("vendor_id", platform.machine() or "unknown"), "family": fields.get("cpu family", ""),
            "model": fields.get("model", ""), "isa": isa, "name": fields.get("model name", "unknown")}


def cpu_label(kind: dict) -> str:
    """A CPU kind in a few words: 'AuthenticAMD family 25 model 17, AVX-512 BF16'."""
    return f"{kind['vendor']} family {kind['family']} model {kind['model']}, {kind['isa']}"


def queue_states(names) -> dict:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    states = {}
    for line in dvc("queue", "status").stdout.splitlines():
        words = line.split()
        for name in names:
            if name in words:
                states[name] = words[-1]
    return states


def run_seeds(seeds: list, jobs: int, params: dict) -> dict:
    """Run the seeds that have no results yet; returns {seed: why} for those that failed.

    With jobs > 1, seeds go `jobs` at a time through DVC's queue, each stage with cores / jobs threads; a
    remainder that cannot fill the workers (the 5th of 5 seeds with 2 jobs) runs alone with every core."""
    fingerprint = code_fingerprint()
    todo = [seed for seed in seeds if not finished(seed, params, fingerprint)]
    for seed in sorted(set(seeds) - set(todo)):
        print(f"seed {seed}: done already ({seed_dir(seed)})")
    if not todo:
        return {}
    if git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "params.yaml"):
        raise PipelineError("src/, stages/, dvc.yaml or params.yaml has uncommitted changes; commit them first "
                            "(a study's experiments run the committed code, with only the seed changed)")
    for seed in todo:
        dvc("exp", "remove", experiment_name(seed), check=False)  # an earlier attempt's experiment, if any
    jobs = min(jobs, len(todo))
    together = len(todo) - len(todo) % jobs if jobs > 1 else 0
    print(f"running seeds {', '.join(map(str, todo))}, {jobs} at a time", flush=True)
    runner = SeedRunner(fingerprint)
    if together:
        runner.in_queue(todo[:together], jobs)
    runner.one_at_a_time(todo[together:])
    return runner.failed


class SeedRunner:
    """Runs seeds as DVC experiments and collects each as it finishes."""

    def __init__(self, fingerprint):
        self.fingerprint, self.failed, self.started = fingerprint, {}, time.perf_counter()
        self.baseline = git("rev-parse", "HEAD").strip()  # the experiments' baseline, whatever HEAD does later

    def record_success(self, seed):
        collect(seed, self.fingerprint, self.baseline)
        top = read_json(seed_dir(seed) / "headline.json")
        print(f"seed {seed}: finished after {(time.perf_counter() - self.started) / 60:.1f} min: ResNet18 "
              f"{top['resnet']['test_accuracy']:.4f}, Small CNN {top['cnn']['test_accuracy']:.4f}, "
              f"gain {100 * top['accuracy_gain']:+.2f} points", flush=True)

    def record_failure(self, seed, why):
        self.failed[seed] = why
        write_json(seed_dir(seed) / "failed.json", {"seed": seed, "error": why})
        print(f"seed {seed}: FAILED ({why})", flush=True)

    def one_at_a_time(self, seeds):
        """`dvc exp run --temp` per seed: a temporary workspace each, no queue to start."""
        for seed in seeds:
            attempt = subprocess.Popen(dvc_command("exp", "run", "--temp", "-S", f"seed={seed}", "-n",
                                                   experiment_name(seed)),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=tool_env())
            try:
                output = attempt.communicate()[0]
            except KeyboardInterrupt:  # the experiment (and, through it, its stage) stops with us
                attempt.terminate()
                attempt.wait()
                raise
            if attempt.returncode == 0:
                self.record_success(seed)
            else:
                errors = (line for line in reversed(output.splitlines()) if line.startswith("ERROR"))
                self.record_failure(seed, next(errors, "failed").strip())

    def in_queue(self, seeds, jobs):
        """`dvc exp run --queue` per seed, `dvc queue start -j jobs`; the workers share the cores."""
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // jobs))}  # threads: auto reads it
        pending = {experiment_name(seed): seed for seed in seeds}
        for name, seed in pending.items():
            dvc("exp", "run", "--queue", "-S", f"seed={seed}", "-n", name, env=env)
        # Not captured: the workers it starts inherit its output and outlive it (a pipe would stay open until
        # the queue is empty, and we would collect no seed before the last one).
        subprocess.run(dvc_command("queue", "start", "-j", str(jobs)),
                       env=tool_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        try:
            while pending:
                time.sleep(POLL_SECONDS)
                for name, state in queue_states(pending).items():
                    if state == "Success":
                        self.record_success(pending.pop(name))
                    elif state == "Failed":
                        log = dvc("queue", "logs", name, check=False).stdout.strip().splitlines()
                        why = next((line for line in reversed(log) if line.startswith("ERROR")), "failed").strip()
                        self.record_failure(pending.pop(name), f"{why} (`dvc queue logs {name}` has the whole log)")
        except KeyboardInterrupt:
            dvc("queue", "kill", *pending, check=False)
            raise
        finally:
            dvc("queue", "stop", check=False)


def has_results(seed: int) -> bool:
    """The seed ran, here or on a machine whose results were pulled: it finished or it failed."""
    folder = seed_dir(seed)
    return (folder / "failed.json").is_file() or (folder / "predictions.csv").is_file()


def load_seed_runs(seeds: list):
    runs, failed, missing = [], {}, []
    for seed in seeds:
        folder = seed_dir(seed)
        if (folder / "failed.json").is_file():
            failed[seed] = read_json(folder / "failed.json")["error"]
        elif (folder / "predictions.csv").is_file():
            rows = read_csv_rows(folder / "predictions.csv", f"seed {seed} again (make study SEEDS={seed})")
            predictions = {key: np.array([int(row[key]) for row in rows]) for key in ("label", *MODEL_NAMES)}
            info = read_json(folder / "run.json")
            runs.append(study.SeedRun(seed, yaml.safe_load((folder / "params.yaml").read_text()), predictions,
                                      {"cpu": info["cpu"], "train_seconds": info["train_seconds"],
                                       "mlflow_run_ids": info["mlflow_run_ids"]}))
        else:
            missing.append(seed)
    return runs, failed, missing


def load_study(seeds: list):
    """Every seed's results, for the aggregate: (finished runs, {seed: why} of failed ones). Refuses a seed
    listed twice, and seeds with no results yet."""
    if len(set(seeds)) != len(seeds):
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        raise study.StudyError(f"study.seeds: seed {', '.join(map(str, repeated))} appears more than once")
    runs, failed, missing = load_seed_runs(seeds)
    if missing:
        which = f"seeds {', '.join(map(str, missing))} have" if len(missing) > 1 else f"seed {missing[0]} has"
        raise study.StudyError(f"{which} no results in {SEEDS_DIR}; run them first (make study), or pull them "
                               "from the machine that ran them (git pull)")
    return runs, failed
