"""The tool layer: what the study's and the tuning's drivers run and record, and nothing of their statistics.

The virtualenv's dvc and git, the environment their commands run in (PATH, threads, no password prompt), a
command that dies with its parent, the code fingerprint (what a seed's predictions depend on besides params) and
the CPU kind (what they are bit-identical per).
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .errors import PipelineError
from .process import set_parent_death_signal

# What a seed's predictions depend on; train_resnet and train_cnn are the pair's layout (a fingerprint of an older rev)
PREDICTION_STAGES = ("prepare", "train_baseline", "train", "evaluate", "train_resnet", "train_cnn")

DVC = Path(sys.executable).parent / "dvc"  # the virtualenv's dvc (beside this Python), whatever PATH says


def tool_env(env=None, threads: int | None = None) -> dict:
    """The environment for dvc and the stages it runs: this virtualenv's commands first on PATH (a stage's
    command is `python stages/...`); with `threads`, the stages' thread count (`threads: auto` reads
    OMP_NUM_THREADS). DVC's own variables of an outer run are left out."""
    env = {key: value for key, value in (env or os.environ).items() if not key.startswith("DVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_TERMINAL_PROMPT"] = "0"  # a remote that asks for a password fails instead of waiting
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def dvc(*args, check=True, cwd=None, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(DVC), *args], capture_output=True, text=True, cwd=cwd, env=env or tool_env())
    if check and result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=cwd).stdout


def start_tool(command, cwd, env, log) -> subprocess.Popen:
    """Start a dvc or git command that writes to `log` and dies with the process that started it (Linux)."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=set_parent_death_signal if sys.platform.startswith("linux") else None)


def code_fingerprint(rev=None, root=Path(".")) -> str:
    """What a seed's predictions depend on besides params: the code the DVC stages up to evaluate list as
    deps (a change there means DVC would rerun them too), in the workspace at `root` or at git revision `rev`."""
    read = (lambda path: (Path(root) / path).read_bytes()) if rev is None else (
        lambda path: subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, check=True).stdout)
    stages = yaml.safe_load(read("dvc.yaml"))["stages"]
    files = sorted({dep for name in PREDICTION_STAGES if name in stages
                    for dep in stages[name].get("do", stages[name]).get("deps", []) if dep.endswith(".py")})
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + read(name))
    return digest.hexdigest()[:16]



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


def cpu_label() -> str:
    """This CPU kind in a few words: 'AMD EPYC (AuthenticAMD family 25 model 17, AVX-512 BF16)'."""
    kind = cpu_kind()
    return f"{kind['name']} ({kind['vendor']} family {kind['family']} model {kind['model']}, {kind['isa']})"
