"""Running a seed study's seeds and writing its aggregate: each seed a DVC experiment of the committed code
with only `seed` changed, its results kept in git (metrics/study/seeds/<seed>/) as soon as it finishes.

With jobs 1, `dvc exp run --temp`, one seed after another; with more, `dvc exp run --queue` and
`dvc queue start -j <jobs>`, the workers sharing the cores (OMP_NUM_THREADS = cores / jobs), and a remainder
that cannot fill the workers alone with every core. A stage that ran before with the same params and code is
restored from DVC's run cache, not retrained. A seed whose folder matches the current params (but for what
may differ between seeds, study.comparable_params) and code is done: a study cut short, or split over
machines, runs only the seeds that are missing. A driver that died while DVC's queue workers trained (they
are detached by DVC's design and go on) is taken over by the next one: it collects the experiments that
finished, waits for the ones still queued or running, and removes only those that failed or were abandoned.
Every seed folder is validated before it is aggregated (`load_study`). The statistics are in study.py.
"""

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from . import MODEL_NAMES, NUM_CLASSES, PREDICTIONS_FILE, study
from .errors import PipelineError
from .files import read_csv_rows, read_json, together, write_json, write_text
from .process import available_cores

SEEDS_DIR = Path("metrics/study/seeds")
LOG_DIR = Path("logs/study")  # each seed's whole output, kept when it fails (git-ignored)
PREDICTION_STAGES = ("prepare", "train_resnet", "train_cnn", "evaluate")  # what a seed's predictions depend on
SEED_METRICS = ("data", "train_resnet", "train_cnn", "evaluate", "compare", "headline")
PREDICTION_FIELDS = ["image", "label", *MODEL_NAMES]
POLL_SECONDS = 5


def tool_env(env=None) -> dict:
    """The environment for dvc and the stages it runs: this virtualenv's commands first on PATH (a stage's
    command is `python stages/...`)."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


DVC = Path(sys.executable).parent / "dvc"  # the virtualenv's dvc (beside this Python), whatever PATH says


def dvc_command(*args) -> list:
    return [str(DVC), *args]


def dvc(*args, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(dvc_command(*args), capture_output=True, text=True, env=tool_env(env))
    if check and result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


def git(*args) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def code_fingerprint(rev=None, root=Path(".")) -> str:
    """What a seed's predictions depend on besides params: the code the DVC stages up to evaluate list as
    deps (a change there means DVC would rerun them too), in the workspace at `root` or at git revision `rev`."""
    read = (lambda path: (root / path).read_bytes()) if rev is None else (
        lambda path: subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, check=True).stdout)
    stages = yaml.safe_load(read("dvc.yaml"))["stages"]
    files = sorted({dep for name in PREDICTION_STAGES for dep in stages[name].get("deps", []) if dep.endswith(".py")})
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + read(name))
    return digest.hexdigest()[:16]


def seed_dir(seed: int) -> Path:
    return SEEDS_DIR / str(seed)


def log_path(seed: int) -> Path:
    return LOG_DIR / f"seed-{seed}.log"


def results_current(seed: int, params: dict, fingerprint: str) -> bool:
    """The seed has results, made with these params (but for what may differ between seeds) and this code, and
    collected with a checksum of its predictions (older versions recorded none: such a seed is collected again
    from DVC when DVC still holds it, else run again)."""
    folder = seed_dir(seed)
    if not (folder / "run.json").is_file() or not (folder / "predictions.csv").is_file():
        return False
    try:
        saved, saved_params = read_json(folder / "run.json"), yaml.safe_load((folder / "params.yaml").read_text())
    except (PipelineError, OSError, yaml.YAMLError):
        return False  # unreadable: not a result to keep (load_study says which file, when it aggregates)
    return (isinstance(saved_params, dict) and saved.get("code") == fingerprint and "predictions_sha256" in saved
            and study.comparable_params(saved_params) == study.comparable_params(params))


def results_exist(seed: int) -> bool:
    """The seed ran, here or on a machine whose results were pulled: it has predictions or a recorded failure
    (whatever code or params made them; see results_current)."""
    folder = seed_dir(seed)
    return (folder / "failed.json").is_file() or (folder / "predictions.csv").is_file()


def experiment_name(seed: int) -> str:
    return f"study-seed-{seed}"


def seeds_named(seeds) -> tuple[str, bool]:
    """How a message names seeds ("seed 4", "seeds 4, 5"), and whether that is more than one."""
    seeds = list(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}", len(seeds) > 1


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def seed_files(seed: int, read, predictions_csv: str, fingerprint: str, source: dict) -> dict:
    """The files of a seed's result folder, {name: text}, from a finished run of its pipeline: `read(path)` gives
    a file of that run's workspace as text, `predictions_csv` its data/predictions/test.csv; run.json records
    `source` (where it ran: experiment and revision, or cluster worker), the code fingerprint, the CPU kind,
    threads and timings, and a checksum of the predictions kept (checked at every aggregate)."""
    rows = [{"image": row["image"], "label": row["label"], **{m: row[f"{m}_predicted"] for m in MODEL_NAMES}}
            for row in csv.DictReader(io.StringIO(predictions_csv))]
    predictions = io.StringIO(newline="")
    writer = csv.DictWriter(predictions, fieldnames=PREDICTION_FIELDS)  # as files.write_csv writes it
    writer.writeheader()
    writer.writerows(rows)
    train = {m: json.loads(read(f"metrics/train_{m}.json")) for m in MODEL_NAMES}
    files = {f"{metric}.json": read(f"metrics/{metric}.json") for metric in SEED_METRICS}
    files.update({f"{model}_epochs.csv": read(f"plots/train/{model}_epochs.csv") for model in MODEL_NAMES})
    files.update({"predictions.csv": predictions.getvalue(), "params.yaml": read("params.yaml")})
    files["run.json"] = json.dumps({
        "seed": seed, **source, "code": fingerprint, "cpu": cpu_kind()["name"], "cpu_kind": cpu_kind(),
        "threads": {m: train[m]["threads"] for m in MODEL_NAMES},
        "train_seconds": {m: train[m]["train_seconds"] for m in MODEL_NAMES},
        "predictions_sha256": hashlib.sha256(predictions.getvalue().encode("utf-8")).hexdigest(),
        "mlflow_run_ids": {**{m: train[m]["mlflow_run_id"] for m in MODEL_NAMES},
                           "compare": json.loads(read("metrics/compare.json")).get("mlflow_run_id")}}, indent=2) + "\n"
    return files


def write_seed_folder(seed: int, files: dict):
    """metrics/study/seeds/<seed>/: every file, or none; a failure recorded before is cleared."""
    folder = seed_dir(seed)
    with together():
        for name, text in files.items():
            write_text(folder / name, text)
    (folder / "failed.json").unlink(missing_ok=True)


def collect(seed: int, ref: str, fingerprint: str):
    """Copy a finished experiment's metrics and per-image predictions into metrics/study/seeds/<seed>/.
    `ref`: the experiment's git ref (refs/exps/<baseline>/<name>); the predictions are read through DVC's API
    from its cache."""
    from dvc import api as dvc_api

    predictions = dvc_api.read(PREDICTIONS_FILE, rev=ref, encoding="utf-8")
    source = {"experiment": experiment_name(seed), "rev": git("rev-parse", ref).strip(),
              "baseline": "".join(ref.split("/")[2:4])}
    files = seed_files(seed, lambda path: git("show", f"{ref}:{path}"), predictions, fingerprint, source)
    write_seed_folder(seed, files)


VECTOR_ISAS = (("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


def cpu_kind() -> dict:
    """What a seed's results depend on of the CPU (they are bit-identical per CPU kind and thread count, not
    across kinds): vendor, family and model numbers, the widest vector ISA, and the model name. The name
    alone is not enough: "AMD EPYC" is what virtual machines of at least three kinds that round
    differently report."""
    import platform

    fields = {}
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    isa = next((title for flag, title in VECTOR_ISAS if flag in flags), "unknown")
    return {"vendor": fields.get("vendor_id", platform.machine() or "unknown"), "family": fields.get("cpu family", ""),
            "model": fields.get("model", ""), "isa": isa, "name": fields.get("model name", "unknown")}


def queue_states(names) -> tuple[dict, int]:
    """({experiment name: Queued | Running | Success | Failed}, active workers) from `dvc queue status`."""
    states, workers = {}, 0
    for line in dvc("queue", "status").stdout.splitlines():
        words = line.split()
        if line.startswith("Worker status:") and len(words) > 2 and words[2].isdigit():
            workers = int(words[2])
        for name in names:
            if name in words:
                states[name] = words[-1]
    return states, workers


def live_experiments() -> set:
    """Names of this repository's experiments whose `dvc exp exec-run` process is alive on this machine (each is
    started with its executor's info file, kept under the repository's .dvc/, which names the experiment)."""
    names, dvc_dir = set(), Path(".dvc").resolve()
    for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines():
        words = line.split()
        if "exec-run" in words and "--infofile" in words[:-1]:
            info = Path(words[words.index("--infofile") + 1]).resolve()
            try:
                if info.is_relative_to(dvc_dir):
                    names.add(json.loads(info.read_text())["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return names


def abandoned_experiments(states: dict, workers: int) -> set:
    """Those of `states` that DVC shows Running although nothing runs them: their worker was stopped with its
    session or machine, and DVC keeps such a task Running for good (treeverse/dvc#8702). An active worker that
    is still setting its experiment up has no process for it yet, so none counts as abandoned until every active
    worker is accounted for by a live process; then looked at again, a poll later."""
    running = {name for name, state in states.items() if state == "Running"}
    live = live_experiments() if running else set()
    if not running - live or len(live) < workers:
        return set()
    time.sleep(POLL_SECONDS)
    return running - live - live_experiments()


def finished_experiments(names) -> dict:
    """{name: [refs]} of the finished experiments (any baseline) with these names."""
    found = {}
    for ref in git("for-each-ref", "--format=%(refname)", "refs/exps").split():
        parts = ref.split("/")
        if len(parts) == 5 and parts[4] in names:
            found.setdefault(parts[4], []).append(ref)
    return found


def stage_error(output: str) -> str:
    """A failed run's reason: the stage's own `error:` line, else DVC's last ERROR line."""
    lines = output.splitlines()
    ours = [line for line in lines if line.startswith("error: ")]
    theirs = [line for line in lines if line.startswith("ERROR")]
    return (ours or theirs or ["failed (no error line in its output)"])[-1].strip()


def check_repository_root(params_path: str):
    if not Path("dvc.yaml").is_file() or not Path(params_path).is_file():
        raise PipelineError(f"{Path.cwd()}: no dvc.yaml or {params_path} here; run the study from the repository "
                            "root (where dvc.yaml is)")


def check_arguments(seeds: list, jobs: int):
    """Before any work: seeds listed once each and not negative, at least one job."""
    study.check_distinct(seeds, "--seeds")
    if any(seed < 0 for seed in seeds):
        raise PipelineError(f"--seeds: {min(seeds)} is negative; a seed is 0 or more")
    if jobs < 1:
        raise PipelineError(f"--jobs {jobs}: at least 1 seed at a time")


def run_seeds(seeds: list, jobs: int, params: dict, cluster: str | None = None) -> dict:
    """Run the seeds that have no current results; returns {seed: why} for those that failed.

    With jobs > 1, seeds go `jobs` at a time through DVC's queue, each stage with cores / jobs threads; a
    remainder that cannot fill the workers (the 5th of 5 seeds with 2 jobs) runs alone with every core.
    What DVC already holds for a seed is adopted, not retrained (see the module's docstring). With `cluster`
    (a Dask scheduler's address), each missing seed is a task on that cluster instead (cluster.py)."""
    check_arguments(seeds, jobs)
    fingerprint = code_fingerprint()
    todo = [seed for seed in seeds if not results_current(seed, params, fingerprint)]
    for seed in sorted(set(seeds) - set(todo)):
        (seed_dir(seed) / "failed.json").unlink(missing_ok=True)
        print(f"seed {seed}: done already ({seed_dir(seed)})")
    if not todo:
        return {}
    runner = SeedRunner(fingerprint, params)
    waiting, workers = {}, 0
    if cluster is None:
        todo, waiting, workers = runner.adopt(todo)
    if not todo:
        if waiting:
            runner.follow_queue(waiting, jobs, start_workers=workers < min(jobs, len(waiting)))
        return runner.failed
    if git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "params.yaml"):
        raise PipelineError("src/, stages/, dvc.yaml or params.yaml has uncommitted changes; commit them first "
                            "(a study's experiments run the committed code, with only the seed changed)")
    if cluster is not None:
        from .cluster import ClusterRunner

        ClusterRunner(runner, cluster).run(todo, fingerprint)
        return runner.failed
    in_flight = len(todo) + len(waiting)  # seeds DVC already runs take their places among the workers
    jobs = min(jobs, in_flight)
    together = max(0, in_flight - in_flight % jobs - len(waiting)) if jobs > 1 else 0
    print(f"running seeds {', '.join(map(str, todo))}, {jobs} at a time", flush=True)
    if together or waiting:
        runner.in_queue(todo[:together], jobs, waiting)
    runner.one_at_a_time(todo[together:])
    return runner.failed


class SeedRunner:
    """Runs seeds as DVC experiments and collects each as it finishes."""

    def __init__(self, fingerprint, params):
        self.fingerprint, self.params, self.failed = fingerprint, params, {}
        self.started = time.perf_counter()

    def matching_ref(self, refs):
        """The ref, of those given, whose experiment ran this code with these params (else None)."""
        for ref in refs:
            try:
                ran = yaml.safe_load(git("show", f"{ref}:params.yaml"))
                if code_fingerprint(ref) == self.fingerprint and \
                        study.comparable_params(ran) == study.comparable_params(self.params):
                    return ref
            except (subprocess.CalledProcessError, yaml.YAMLError, KeyError, TypeError):
                continue
        return None

    def adopt(self, seeds) -> tuple[list, dict, int]:
        """Take over what DVC holds for `seeds`: collect finished experiments of this code and params; remove
        failed or abandoned ones (also those DVC shows running with no process left) and interrupted temporary
        workspaces. Returns (the seeds still to run, {name: seed} of those queued or running in DVC, to follow,
        the queue workers alive)."""
        names = {experiment_name(seed): seed for seed in seeds}
        states, workers = queue_states(names)
        abandoned = abandoned_experiments(states, workers)
        if abandoned:
            which, many = seeds_named(names[name] for name in sorted(abandoned))
            them, their = ("them", "their") if many else ("it", "its")
            print(f"{which}: DVC shows {them} running, but no process runs {them} (stopped with {their} session or "
                  f"machine); running {them} again", flush=True)
            dvc("queue", "kill", *sorted(abandoned), check=False)  # DVC's remedy: marks them failed
            states.update(dict.fromkeys(abandoned, "Failed"))
        waiting = {name: seed for name, seed in names.items() if states.get(name) in ("Queued", "Running")}
        finished = finished_experiments(set(names) - set(waiting))
        todo = []
        for name, seed in names.items():
            if name in waiting:
                continue
            ref = self.matching_ref(finished.get(name, []))
            if ref:
                print(f"seed {seed}: finished in DVC already ({ref}); collecting it", flush=True)
                self.record_success(seed, ref)
            else:
                if name in finished or name in states:  # failed, abandoned, or of other code or params
                    dvc("exp", "remove", name, check=False)
                todo.append(seed)
        shutil.rmtree(".dvc/tmp/exps/standalone", ignore_errors=True)  # interrupted --temp runs (we hold the lock)
        if waiting:
            which, many = seeds_named(waiting.values())
            print(f"{which}: queued or running in DVC already; waiting for {'them' if many else 'it'}", flush=True)
        return todo, waiting, workers

    def record_success(self, seed, ref):
        collect(seed, ref, self.fingerprint)
        self.report_success(seed)

    def report_success(self, seed, where=""):
        top = read_json(seed_dir(seed) / "headline.json")
        print(f"seed {seed}: finished {where + ' ' if where else ''}after "
              f"{(time.perf_counter() - self.started) / 60:.1f} min: ResNet18 {top['resnet']['test_accuracy']:.4f}, "
              f"Small CNN {top['cnn']['test_accuracy']:.4f}, gain {100 * top['accuracy_gain']:+.2f} points", flush=True)

    def record_failure(self, seed, output):
        """Keep the whole output in the seed's log; failed.json holds the stage's own error line and names the
        log. A folder that holds a current result is left as it is."""
        log = log_path(seed)
        write_text(log, output)
        why = f"{stage_error(output)} (whole output: {log})"
        self.failed[seed] = why
        if not results_current(seed, self.params, self.fingerprint):
            write_json(seed_dir(seed) / "failed.json", {"seed": seed, "error": why, "log": str(log)})
        print(f"seed {seed}: FAILED: {why}", flush=True)

    def experiment_ref(self, name) -> str:
        refs = finished_experiments({name}).get(name, [])
        ref = self.matching_ref(refs)
        if ref is None:
            raise PipelineError(f"experiment {name} finished but its ref is not found (refs: {refs}); run again")
        return ref

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
                self.record_success(seed, self.experiment_ref(experiment_name(seed)))
            else:
                self.record_failure(seed, output)

    def worker_env(self, jobs):
        return {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // jobs))}  # threads: auto reads it

    def in_queue(self, seeds, jobs, waiting=None):
        """`dvc exp run --queue` per seed, `dvc queue start -j jobs` (the workers missing), then follows them and
        `waiting` ({name: seed} that DVC runs already); the workers share the cores. Ctrl-C while queueing leaves
        nothing queued."""
        pending = {}
        try:
            for seed in seeds:
                dvc("exp", "run", "--queue", "-S", f"seed={seed}", "-n", experiment_name(seed),
                    env=self.worker_env(jobs))
                pending[experiment_name(seed)] = seed
        except KeyboardInterrupt:
            dvc("queue", "remove", *pending, check=False)
            raise
        self.follow_queue({**(waiting or {}), **pending}, jobs, start_workers=True)

    def start_workers(self, jobs):
        """`dvc queue start -j jobs`: starts the workers missing up to `jobs`. Not captured: the workers it starts
        inherit its output and outlive it (a pipe would stay open until the queue is empty, and we would collect
        no seed before the last one)."""
        subprocess.run(dvc_command("queue", "start", "-j", str(jobs)), env=tool_env(self.worker_env(jobs)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    def follow_queue(self, pending: dict, jobs, start_workers: bool):
        """Collect each of `pending` ({name: seed}) as DVC's queue finishes it; Ctrl-C kills what is left. A worker
        that exits while seeds are still queued (seen with DVC 3.67's first worker) is started again."""
        if start_workers:
            self.start_workers(jobs)
        pending = dict(pending)
        try:
            while pending:
                time.sleep(POLL_SECONDS)
                states, workers = queue_states(pending)
                for name in abandoned_experiments(states, workers):  # its worker died while we followed it
                    dvc("queue", "kill", name, check=False)
                    states[name] = "Abandoned"
                    self.record_failure(pending.pop(name), f"error: DVC showed {name} running, but no process ran "
                                        "it (its worker stopped); make study runs it again\n")
                for name, state in states.items():
                    if state == "Success":
                        self.record_success(pending.pop(name), self.experiment_ref(name))
                    elif state == "Failed":
                        log = dvc("queue", "logs", name, check=False)
                        self.record_failure(pending.pop(name), log.stdout + log.stderr)
                queued = sum(state == "Queued" for state in states.values())
                if queued and workers < min(jobs, queued + sum(state == "Running" for state in states.values())):
                    print(f"{workers} queue worker(s) left for {queued} queued seed(s): starting {jobs}", flush=True)
                    self.start_workers(jobs)
                    start_workers = True
        except KeyboardInterrupt:
            dvc("queue", "kill", *pending, check=False)
            raise
        finally:
            if start_workers:
                dvc("queue", "stop", check=False)


# ----------------------------------------------------------------------------- reading seeds, validated

def _refuse(path, what, remedy) -> PipelineError:
    return study.StudyError(f"{path}: {what}; {remedy}")


def load_predictions(seed: int, info: dict) -> dict:
    """A seed's predictions.csv, validated: its checksum as collected, the header, image ids 0..n-1 in order,
    labels and predictions classes 0-9. {"label", "resnet", "cnn": arrays}."""
    path = seed_dir(seed) / "predictions.csv"
    remedy = f"restore it (git checkout -- {path}) or run seed {seed} again (remove {seed_dir(seed)}, make study)"
    if info.get("predictions_sha256") != sha256(path):
        raise _refuse(path, "does not match the checksum run.json recorded when the seed was collected "
                      "(edited or damaged since)" if info.get("predictions_sha256") else
                      "has no checksum in run.json (collected by an older version)", remedy)
    rows = read_csv_rows(path, f"seed {seed} again (remove {seed_dir(seed)}, make study)")
    if not rows:
        raise _refuse(path, "holds no predictions", remedy)
    if list(rows[0]) != PREDICTION_FIELDS:
        raise _refuse(path, f"header is {list(rows[0])}, expected {PREDICTION_FIELDS}", remedy)
    columns = [[] for _ in PREDICTION_FIELDS]
    for row_number, row in enumerate(rows, start=2):
        values = [int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else None
                  for value in row.values()]
        if len(values) != len(PREDICTION_FIELDS) or None in values:
            raise _refuse(path, f"row {row_number}: {list(row.values())} is not {len(PREDICTION_FIELDS)} integers",
                          remedy)
        image, *classes = values
        if image != row_number - 2:
            raise _refuse(path, f"row {row_number}: image {image}, expected {row_number - 2}", remedy)
        if not all(0 <= value < NUM_CLASSES for value in classes):
            raise _refuse(path, f"row {row_number}: a class outside 0-{NUM_CLASSES - 1} ({list(row.values())})",
                          remedy)
        for column, value in zip(columns, values):
            column.append(value)
    return {name: np.array(column) for name, column in zip(PREDICTION_FIELDS[1:], columns[1:])}


def load_seed(seed: int) -> study.SeedRun:
    """A finished seed's folder, every file validated (one line naming the file and what to do)."""
    folder = seed_dir(seed)
    remedy = f"run seed {seed} again (remove {folder}, then make study SEEDS={seed})"
    info = read_json(folder / "run.json", f"seed {seed} again (make study SEEDS={seed})")
    missing = sorted({"code", "train_seconds", "mlflow_run_ids"} - set(info)) if isinstance(info, dict) else ["all"]
    if missing:
        raise _refuse(folder / "run.json", f"lacks {', '.join(missing)}", remedy)
    try:
        params = yaml.safe_load((folder / "params.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise _refuse(folder / "params.yaml", f"not readable YAML ({type(error).__name__})", remedy) from None
    if not isinstance(params, dict):
        raise _refuse(folder / "params.yaml", "not a mapping of params", remedy)
    return study.SeedRun(seed, params, load_predictions(seed, info),
                         {"cpu_kind": info.get("cpu_kind") or {"name": info.get("cpu", "unknown")},
                          "train_seconds": info["train_seconds"], "mlflow_run_ids": info["mlflow_run_ids"]})


def load_study(seeds: list):
    """Every seed's results, for the aggregate: (finished runs, {seed: why} of failed ones), each folder
    validated, labels equal across seeds. Refuses a seed listed twice, and seeds with no results yet."""
    study.check_distinct(seeds)
    runs, failed, missing = [], {}, []
    for seed in seeds:
        folder = seed_dir(seed)
        if (folder / "failed.json").is_file():
            failed[seed] = read_json(folder / "failed.json", f"seed {seed} again (make study SEEDS={seed})")["error"]
        elif (folder / "predictions.csv").is_file():
            runs.append(load_seed(seed))
        else:
            missing.append(seed)
    if missing:
        which, many = seeds_named(missing)
        raise study.StudyError(f"{which} {'have' if many else 'has'} no results in {SEEDS_DIR}; run them first "
                               "(make study), or pull them "
                               "from the machine that ran them (git pull)")
    for run in runs[1:]:
        if len(run.predictions["label"]) != len(runs[0].predictions["label"]) or \
                not np.array_equal(run.predictions["label"], runs[0].predictions["label"]):
            raise study.StudyError(f"{seed_dir(run.seed) / 'predictions.csv'}: its labels differ from seed "
                                   f"{runs[0].seed}'s (another test set, or an edit); run seed {run.seed} again")
    return runs, failed


# ------------------------------------------------------------------------------------ the aggregate

STUDY_PLOTS = Path("plots/study")


def aggregate(seeds: list, params, tracker) -> dict:
    """metrics/study.json, plots/study/ and the study's MLflow run, from the seeds' committed results: every
    output checked writable and every seed folder validated first, then all outputs written or none."""
    from . import plots, records, tracking
    from .files import check_writable, save_figure, write_csv

    draw = {"accuracy_per_seed": plots.seed_accuracy, "f1_difference": plots.seed_forest,
            "gain_per_seed": plots.seed_gains, "noise_sources": plots.noise_sources}
    outputs = [*(f"{name}.png" for name in draw), *study.PLOT_TABLES, "SUMMARY.md"]
    check_writable([*(STUDY_PLOTS / name for name in outputs), "metrics/study.json"])
    runs, failed = load_study(seeds)
    for seed, why in failed.items():
        print(f"warning: seed {seed} failed and is left out of the study: {why}")
    result = study.aggregate(runs, params.compare, failed)
    summary = study.summary_markdown(result)
    figures = {STUDY_PLOTS / f"{name}.png": figure(result) for name, figure in draw.items()}
    tables = study.plot_rows(result)
    run_params = records.study_run_params(result, study.comparable_params(runs[0].params), params.compare)
    with tracking.stage_run(tracker, "study", f"Seed study ({result['k']} seeds)", run_params) as run_id:
        with together():
            for path, figure in figures.items():
                save_figure(path, figure)
            for path, rows, fields in tables:
                write_csv(STUDY_PLOTS / path, rows, fields)
            write_text(STUDY_PLOTS / "SUMMARY.md", summary)
            write_json("metrics/study.json", {**result, "mlflow_run_id": run_id})
        if run_id:
            records.log_study(tracker, run_id, result, figures, summary)
    for figure in figures.values():
        plots.close(figure)
    print(summary.split("## Verdict")[1].strip())
    return result
