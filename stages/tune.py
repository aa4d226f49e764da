"""Command `make tune`: every searched model's recipe, the same configurations for each, ranked by successive halving
over epochs at full data (tuning.py).

    python stages/tune.py [--jobs 2] [--cluster tcp://host:8786] [--models resnet,cnn]

Not a DVC stage: its trials are Dask tasks on the study's engine (engine.py), on the prepared training and
validation splits (data/prepared: `dvc repro prepare` first; the test split is never opened). Run again, it
goes on where it stopped. One driver per workspace at a time.
"""

import argparse
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import process, search, tracking, tuning  # noqa: E402
from fashion_compare.engine import scheduler_address  # noqa: E402
from fashion_compare.errors import PipelineError, exit_on_error  # noqa: E402
from fashion_compare.params import load_params  # noqa: E402

LOCK = Path(".dvc/tmp/tune.lock")


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, help="trials at once (default: study.jobs)")
    parser.add_argument("--cluster", help="a Dask scheduler (default: DASK_SCHEDULER_ADDRESS; none: this machine)")
    parser.add_argument("--models", help="the models to search, comma-separated (default: tune.models, else compare's)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()
    process.raise_on_sigterm()
    params = load_params(args.params)
    if args.models:
        params = params.model_copy(update={"tune": {**(params.tune or {}), "models": args.models.split(",")}})
    tuning.tune_params(params, args.params)  # before any work: the search's settings are right
    jobs = args.jobs if args.jobs is not None else params.study.jobs
    if jobs < 1:
        raise PipelineError(f"--jobs {jobs}: at least 1 trial at a time")
    for split in ("train", "val"):
        if not (Path(args.data) / f"{split}.pt").is_file():
            raise PipelineError(f"{Path(args.data) / f'{split}.pt'}: not found; run `dvc repro prepare` first")
    address = scheduler_address(args.cluster)
    with process.exclusive(LOCK, "a tuning"):
        search.tune(params, args.params, args.data, jobs, address, tracking.connect(params.tracking))


if __name__ == "__main__":
    main()
