"""Stage prepare: find and check the raw Fashion-MNIST, split it, save tensors to data/prepared/."""

import argparse
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import data
from fashion_compare.errors import exit_on_error
from fashion_compare.files import write_json
from fashion_compare.params import DataParams, load_params


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/prepared")
    parser.add_argument("--metrics", default="metrics/data.json")
    args = parser.parse_args()

    params = load_params(args.params)
    required = params.data.raw_dir != DataParams.model_fields["raw_dir"].default  # a folder of the user's
    train, test, source = data.load_raw(params.data.raw_dir, required=required)
    splits = data.prepare(train, test, params.data.val_fraction, params.data.subset, params.seed)
    data.save_splits(splits, args.out)
    write_json(args.metrics, {"source": source, "subset": params.data.subset, **data.split_summary(splits)})
    sizes = ", ".join(f"{name}={len(tensors['labels'])}" for name, tensors in splits.items())
    print(f"prepared {sizes} from {source}")


if __name__ == "__main__":
    main()
