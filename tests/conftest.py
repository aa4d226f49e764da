import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fashion_compare.data import DEBIAN_DIR, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# pytest-xdist workers share the cores: each worker, and every stage it starts (`threads: auto` reads
# OMP_NUM_THREADS), gets its part of them. Two processes with all cores each would slow both down >10x.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_pair(directory: Path, images: np.ndarray, labels: np.ndarray, prefix="train", compress=True):
    """Write an images/labels IDX pair; returns their paths."""
    paths = []
    for name, array, magic in ((f"{prefix}-images-idx3-ubyte", images, IDX_IMAGES_MAGIC),
                               (f"{prefix}-labels-idx1-ubyte", labels, IDX_LABELS_MAGIC)):
        content = idx_bytes(array, magic)
        path = directory / (name + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(content) if compress else content)
        paths.append(path)
    return paths


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


@pytest.fixture(scope="session")
def real_raw():
    """The real Fashion-MNIST from Debian's package (`make test` installs it)."""
    from fashion_compare.data import load_raw

    assert DEBIAN_DIR.is_dir(), f"{DEBIAN_DIR} missing: apt-get install dataset-fashion-mnist (make test does)"
    train, test, _ = load_raw("/nonexistent", fetch=_no_network)
    return train, test


def _no_network(directory):
    raise AssertionError("tests must not download")


def tool_env(**extra):
    """The environment for dvc/mlflow subprocesses: this venv first on PATH, no user tracking URI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd, cwd, env=None, check=True, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_repo_copy(target: Path, **params) -> Path:
    """A temporary git copy of the working tree (tracked and untracked-but-not-ignored files),
    with `params` (see set_params) applied and committed."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO).stdout
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if params:
        set_params(target, **params)
    run(["git", "init", "-q"], target)
    commit_all(target, "copy")
    return target


def reset_to_head(repo: Path):
    """Undo what earlier tests left in the workspace (an applied experiment, a forced rerun): params,
    lock file, metrics and plots as committed, and DVC's outputs to match them. From HEAD, not the index:
    with `core.autostage`, `dvc repro` stages the dvc.lock of whatever ran last."""
    run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "metrics", "plots"], repo)
    run(["dvc", "checkout", "-q", "-f"], repo)


def commit_all(repo: Path, message: str):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message], repo)


def set_params(repo: Path, **changes):
    """Edit params.yaml in the copy: keys as dotted paths with '__' (data__subset=600)."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


SMOKE_PARAMS = {"data__subset": 600, "epochs": 1, "models__resnet__recipe__epochs": 1, "evaluate__latency_repeats": 10}


def build_smoke_pipeline(path: Path) -> Path:
    """A temporary git copy where `dvc repro` ran on a stratified subset of 600 images for 1 epoch."""
    make_repo_copy(path, **SMOKE_PARAMS)
    # prove the pipeline writes its outputs itself (the committed seed study, metrics/study and plots/study, stays)
    for stale in ("dvc.lock", "plots/train", "plots/evaluate", "plots/compare", "metrics/train", *(
            str(json.relative_to(path)) for json in (path / "metrics").glob("*.json"))):
        target = path / stale
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    result = run(["dvc", "repro"], path)
    for stage in ("prepare", "train@resnet", "train_baseline", "evaluate", "compare"):
        assert f"Running stage '{stage}'" in result.stdout
    commit_all(path, "smoke run")
    return path


@pytest.fixture(scope="session")
def built_pipeline(tmp_path_factory, worker_id):
    """The smoke pipeline, built once per test session (the first pytest-xdist worker to need it builds it;
    the others wait for it). Read-only: tests work in copies of it (`repo`)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    path = root / "built-pipeline"
    with FileLock(str(root / "built-pipeline.lock")):
        if not (path / ".git").is_dir():
            path.mkdir()
            build_smoke_pipeline(path)
    return path


def copy_built(built: Path, target: Path) -> Path:
    """A copy of the built pipeline (git, DVC cache, MLflow store), as if built there."""
    shutil.copytree(built, target, symlinks=True, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="session")
def repo(built_pipeline, tmp_path_factory):
    """This worker's copy of the built smoke pipeline: tests may change it, and put it back (reset_to_head)."""
    return copy_built(built_pipeline, tmp_path_factory.mktemp("pipeline"))


@pytest.fixture
def own_repo(built_pipeline, tmp_path):
    """A copy of the built smoke pipeline for one test, whose experiments would change what other tests read in
    a shared copy (an experiment's compare run becomes the parent of the cached training runs it compares)."""
    return copy_built(built_pipeline, tmp_path / "pipeline")


# ---------------------------------------------------------------- an MLflow tracking server on loopback

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_workers(address, count, env, seconds=60):
    code = ("import sys; from distributed import Client; c = Client(sys.argv[1], timeout='10s'); "
            "print(len(c.scheduler_info()['workers']))")
    deadline = time.time() + seconds
    while time.time() < deadline:
        result = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env)
        if result.returncode == 0 and int(result.stdout.strip() or 0) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"{count} workers did not join {address}")


def wait_until_up(url, process, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer")


def start_mlflow_server(folder: Path, port: int):
    """`mlflow server` as the README sets it up: a sqlite backend in `folder`, artifacts proxied by the
    server; returns once it answers. The same folder and port again: the same server, restarted."""
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # without MLflow's job runner and its 7 Huey consumers (GenAI jobs, unused here): ~12 s of CPU a start
        env=tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server)
    except BaseException:
        server.terminate()
        raise
    return server


def stop(server):
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    """The URI of a tracking server that lives as long as the test."""
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


# ---------------------------------------------------------------- raw data in the layouts users have

@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """The team's MLflow server on loopback, for this module's tests (each uses an experiment of its own).
    Session-scoped: a module-scoped server would start again whenever pytest-xdist runs another module's
    test in between."""
    folder = tmp_path_factory.mktemp("team-server")
    server = start_mlflow_server(folder, free_port())
    try:
        yield f"http://127.0.0.1:{server.args[server.args.index('--port') + 1]}"
    finally:
        stop(server)


def write_csv_layout(dataset, path):
    """Write a dataset in the CSV layout (label, pixel1..pixel784), as Kaggle's copy of Fashion-MNIST has it."""
    import pandas as pd

    columns = {"label": dataset.labels}
    flat = dataset.images.reshape(len(dataset.labels), -1)
    columns.update({f"pixel{i + 1}": flat[:, i] for i in range(flat.shape[1])})
    pd.DataFrame(columns).to_csv(path, index=False)


def copy_raw(source_dir, target_dir):
    """Copy the IDX files of source_dir into target_dir (a local copy in data/raw)."""
    from fashion_compare.data import RAW_SPLITS, _idx_path

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    for split in RAW_SPLITS:
        for name in (split.images_file, split.labels_file):
            shutil.copy2(_idx_path(Path(source_dir), name), target_dir)


# The end-to-end tests of `make test` that take longest (20 s or more each with one core), in the order they are
# handed out; the first also builds the shared smoke pipeline. (The seed studies and the other longest tests,
# `make test-study`, run one at a time.) tests/test_suite_order.py checks that every name here is a test of
# `make test`.
LONGEST_END_TO_END = ("test_an_lr_experiment_is_tracked_shown_and_restored_from_the_run_cache",
                      "test_tracking_outage_mid_training_keeps_the_training_and_names_what_was_not_logged",
                      "test_killing_dvc_alone_stops_the_training_and_the_rerun_resumes_it",
                      "test_rerunning_prepare_and_training_gives_the_same_bytes")


def pytest_collection_modifyitems(config, items):
    """Longest first, so that pytest-xdist workers finish together: the longest end-to-end test (which also
    builds the shared smoke pipeline), then the tests that need no pipeline (while it is built), then the other
    long end-to-end tests, then the rest."""
    def order(item):
        if item.name == LONGEST_END_TO_END[0]:
            return (0, 0)
        if not item.get_closest_marker("e2e"):
            return (1, 0)
        if item.name in LONGEST_END_TO_END:
            return (2, LONGEST_END_TO_END.index(item.name))
        return (3, 0)

    items.sort(key=order)
