"""Kill `autotune search` with SIGKILL at random points of a 30-trial search, resuming after each kill.

A search on tests/workloads/tiny.py (batch sizes and DataLoader workers searched) is started
with the trials it still owes; until the kills are used up, each run is killed with SIGKILL at a
random moment (start-up, the workload check, a trial, a database write), and the next run resumes
the study. After each kill the script waits 5 s and looks for processes the dead search left
alive; at the end it reads the study. Counted:

- trials lost: trials left RUNNING, and trials cut off while measuring (``interrupted``) whose
  config was never measured afterwards;
- orphan processes: trial processes and DataLoader workers alive 5 s after their search died;
- scratch folders left: the trials' ``autotune-trial-*`` folders in the search's temporary folder
  once the study is complete.

A kill falls while the study still owes trials; the run that measures the last one is not killed.

All three must be 0. Run: ``python benchmarks/kill_search.py`` (about 4 minutes on 2 CPU cores);
writes ``benchmarks/results/kill_search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = f"{ROOT / 'tests' / 'workloads' / 'tiny.py'}:workload"
SPACE = "knobs:\n  batch_size: [8, 16, 32, 64]\n  num_workers: [0, 1, 2]\n"
MEASURE = ["--window-seconds", "0.2", "--windows", "2", "--warmup-steps", "1", "--no-lr-find", "--slow-fraction", "0"]
MARK_VARIABLE = "AUTOTUNE_KILL_BENCHMARK"
ORPHAN_WAIT_SECONDS = 5.0
MAX_KILL_DELAY_SECONDS = 12.0  # a run is killed this long after its start at most (it starts up in about 2-4 s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill_search.json"))
    parser.add_argument("--keep", action="store_true", help="keep the study and the runs' logs (in /tmp)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="autotune-kill-", dir="/tmp"))  # short: DataLoader sockets go under it
    scratch_root = folder / "tmp"
    scratch_root.mkdir()
    (folder / "space.yaml").write_text(SPACE)
    database = folder / "kill.db"
    mark = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(scratch_root), "AUTOTUNE_CACHE_DIR": str(folder / "cache"), MARK_VARIABLE: mark}
    command = [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "--workload",
        WORKLOAD,
        "--study",
        "tiny",
        "--space",
        str(folder / "space.yaml"),
        "--storage",
        f"sqlite:///{database}",
        "--seed",
        "0",
        *MEASURE,
    ]

    started = time.monotonic()
    runs = []
    while True:
        owed = args.trials - len(_measured(database))
        if owed <= 0:
            break
        kills_left = args.kills - len([run for run in runs if run["killed"]])
        delay = rng.uniform(0.5, _longest_delay(runs, args.trials - owed, owed, kills_left)) if kills_left > 0 else None
        with open(folder / f"run-{len(runs)}.log", "w") as log:
            search = subprocess.Popen(
                [*command, "--trials", str(owed)], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT
            )
            run = {"trials_owed": owed, "kill_after_seconds": delay, "killed": False}
            begun = time.monotonic()
            try:
                search.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            run["seconds"] = round(time.monotonic() - begun, 2)  # its life, less any wait after a kill
            if search.returncode is None:  # still running at its kill delay
                if len(_measured(database)) >= args.trials:
                    search.wait()  # its trials are all measured: the search is over, no kill
                else:
                    _kill(search, database, mark, scratch_root, run)
            run["returncode"] = search.returncode
        runs.append(run)
        print(json.dumps(run), flush=True)

    trials = _trials(database)
    measured = _measured(database)
    lost = _lost(trials)
    result = {
        "what": "SIGKILL of `autotune search` at random points of a 30-trial search, resumed after each kill",
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}",
        "workload": "tests/workloads/tiny.py:workload, space " + SPACE.replace("\n", " ").strip(),
        "seed": args.seed,
        "kills_asked": args.kills,
        "kills": sum(run["killed"] for run in runs),
        "trials_cut_off": sum(trial.get("status") == "interrupted" for trial in trials),
        "runs": len(runs),
        "wall_seconds": round(time.monotonic() - started, 1),
        "trials_in_study": len(trials),
        "trials_measured": len(measured),
        "status_counts": _counts(trials),
        "trials_lost": len(lost),
        "lost": lost,
        "trials": [
            {
                "trial": t["number"],
                "status": t.get("status", t["state"].lower()),
                "reason": t.get("reason", ""),
                **({"retry_of": t["retry_of"]} if "retry_of" in t else {}),
            }
            for t in trials
        ],
        "orphan_processes": sum(len(run.get("orphans", [])) for run in runs),
        "scratch_folders_left": len(_scratch_folders(scratch_root)),
        "runs_detail": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                key: result[key]
                for key in (
                    "kills",
                    "trials_cut_off",
                    "trials_measured",
                    "trials_lost",
                    "orphan_processes",
                    "scratch_folders_left",
                )
            }
        )
    )
    if args.keep:
        print(f"kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    if result["kills"] < args.kills:
        print(f"only {result['kills']} of {args.kills} kills fell before the search's trials were done")
    if result["trials_lost"] or result["orphan_processes"] or result["scratch_folders_left"]:
        sys.exit(1)


def _longest_delay(runs: list[dict], measured: int, owed: int, kills_left: int) -> float:
    """The longest kill delay of the next run, so that the kills left spread over the trials owed:
    on average a run lives long enough for its share of them (the search's pace so far decides)."""
    if not runs or not measured:
        return MAX_KILL_DELAY_SECONDS
    seconds_per_trial = sum(run["seconds"] for run in runs) / measured  # start-up included
    share = owed / (kills_left + 1)
    return min(MAX_KILL_DELAY_SECONDS, max(1.0, 2 * seconds_per_trial * share))


def _kill(search: subprocess.Popen, database: Path, mark: str, scratch_root: Path, run: dict) -> None:
    """SIGKILL the search; 5 s later, note the processes it left alive and the scratch folders."""
    running = _running(database)  # what the kill cuts off
    search.send_signal(signal.SIGKILL)
    search.wait()
    run.update(killed=True, trials_running_at_kill=running)
    time.sleep(ORPHAN_WAIT_SECONDS)
    orphans = _marked_processes(mark)
    run["orphans"] = [" ".join(process.cmdline())[:120] for process in orphans]
    run["scratch_folders_after_kill"] = _scratch_folders(scratch_root)
    for process in orphans:  # counted; killed so that they do not disturb the next runs
        process.kill()


def _query(database: Path, sql: str) -> list[tuple]:
    """Read the study's tables directly (read-only): opening the storage through Optuna while a
    search creates it would race its table creation."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the tables are being created
        return []


def _trials(database: Path) -> list[dict]:
    rows = _query(database, "SELECT trial_id, number, state FROM trials ORDER BY number")
    attrs: dict[int, dict] = {}
    for trial_id, key, value in _query(database, "SELECT trial_id, key, value_json FROM trial_user_attributes"):
        attrs.setdefault(trial_id, {})[key] = json.loads(value)
    return [{"number": number, "state": state, **attrs.get(trial_id, {})} for trial_id, number, state in rows]


def _measured(database: Path) -> list[dict]:
    """Finished trials that were not cut off: the search's 30."""
    return [
        t
        for t in _trials(database)
        if t["state"] in ("COMPLETE", "PRUNED", "FAIL") and t.get("status") != "interrupted"
    ]


def _running(database: Path) -> list[int]:
    return [t["number"] for t in _trials(database) if t["state"] == "RUNNING"]


def _lost(trials: list[dict]) -> list[dict]:
    """Trials left running, and interrupted trials whose config no later trial measured."""
    lost = [{"trial": t["number"], "why": "left RUNNING"} for t in trials if t["state"] == "RUNNING"]
    for trial in trials:
        if trial.get("status") != "interrupted" or "config" not in trial:
            continue  # a trial cut off before its config was drawn measured nothing
        later = [
            t
            for t in trials
            if t["number"] > trial["number"]
            and t.get("config") == trial["config"]
            and t["state"] != "RUNNING"
            and t.get("status") != "interrupted"
        ]
        if not later:
            lost.append({"trial": trial["number"], "why": "its config was never measured again"})
    return lost


def _counts(trials: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        status = trial.get("status", trial["state"].lower())
        counts[status] = counts.get(status, 0) + 1
    return counts


def _marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARK_VARIABLE) == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _scratch_folders(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.name.startswith("autotune-trial-"))


if __name__ == "__main__":
    main()
