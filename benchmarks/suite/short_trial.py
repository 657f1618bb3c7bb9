"""One short trial of a config, measured as its search measured it: the study's workload, measure
settings, device and memory budget, in a fresh trial process (autotune's own harness).

    python benchmarks/suite/short_trial.py --storage sqlite:///autotune.db --study NAME --config best.yaml [--out F]

Prints one JSON line (and writes it to --out): samples/s, the workload's units/s, the timed seconds and the trial's wall
time. The suite runs it between runs 10x as long, so that the short trial's figure is compared with
the long run's under the same drift of a shared machine.
"""

from __future__ import annotations

import argparse
import json

import optuna
import yaml

from autotune.runner import run_trial
from autotune.study._verify import trial_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--config", required=True, help="an export-best file (its config: section)")
    parser.add_argument("--out", help="write the figures here too (JSON)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup = optuna.load_study(study_name=args.study, storage=args.storage).user_attrs
    with open(args.config) as file:
        config = yaml.safe_load(file)["config"]
    outcome = run_trial(trial_job(setup, config))
    if outcome.status.value != "ok":
        raise SystemExit(f"short_trial.py: the trial ended {outcome.status.value}: {outcome.reason}")
    figures = json.dumps(
        {
            "samples_per_second": outcome.samples_per_second,
            "unit_per_second": outcome.unit_per_second,
            "timed_seconds": sum(window.seconds for window in outcome.windows or []),
            "wall_seconds": outcome.wall_seconds,
        }
    )
    print(figures)
    if args.out:
        with open(args.out, "w") as file:
            file.write(figures + "\n")


if __name__ == "__main__":
    main()
