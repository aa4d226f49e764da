"""Benchmark: ResNet18's CPU speed-ups one at a time, each on top of the ones before (bare loop, batch 20).

    python benchmarks/resnet_speedups.py [--steps 300] [--repeats 2]   (needs data/prepared)

plain -> + fused Adam -> + single-output convolutions as matrix products -> + Adam on the kernel taps that
meet data only -> + the stage's process settings (= the bare loop of training_speed.py). Same method as
training_speed.py: fresh processes, interleaved rounds, the best round counts.
"""

import argparse

from common import exit_on_error, record, say
from training_speed import LOOPS, Loop, best_of_interleaved

ABLATION = {
    "plain": LOOPS["plain"],
    "+ fused Adam": Loop(convs="stock", adam="fused", process="plain", memory_format="contiguous"),
    "+ single-output convolutions": Loop(adam="fused", process="plain", memory_format="contiguous"),
    "+ Adam on the live taps only": Loop(process="plain", memory_format="contiguous"),
    "+ malloc keeps freed memory, no NaN-fill (= bare)": LOOPS["bare"],
}


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    say(f"ResNet18, batch 20, the speed-ups one at a time ({args.steps} steps, best of {args.repeats}):")
    speed = best_of_interleaved("resnet", ABLATION, args.steps, args.repeats)
    for label, value in speed.items():
        record("resnet_speedups", label, {"images_per_s": value, "over_plain": value / speed["plain"]})
        say(f"  {label:55} {value:8.1f} img/s  {value / speed['plain']:.2f}x plain")


if __name__ == "__main__":
    main()
