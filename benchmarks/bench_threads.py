"""Threads on a shared machine: the offline main job's wall time with 1, 2, ... threads, idle and under load.

"Loaded" starts `--load` busy processes (pure Python loops, one core each) beside the job, as other users' jobs on
a shared machine would. Each configuration runs in a fresh process, the order rotates between rounds, and the
median over rounds is reported, with the default thread count the project chose in that situation.

Example:
    ```bash
    python benchmarks/bench_threads.py --threads 1 2 --load 1 --rounds 3 --max_train_steps 100
    ```
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--load", type=int, default=1, help="Busy processes in the loaded runs.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=100)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "threads.json"))
    return parser.parse_args(argv)


def run_job(workdir: Path, num_threads: int | None, max_train_steps: int) -> float:
    """Wall time of one main job (dataset generation, training, evaluation) in a fresh process."""
    command = [sys.executable, "-m", "training.demo", "--output_dir", str(workdir), "--max_train_steps"]
    command += [str(max_train_steps), *(["--num_threads", str(num_threads)] if num_threads else [])]
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def default_threads_now() -> int:
    code = "from inference.devices import default_num_threads; print(default_num_threads())"
    return int(subprocess.check_output([sys.executable, "-c", code], cwd=REPO, text=True))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = [*args.threads, None]  # None: the project's default
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for loaded in (False, True):
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.load if loaded else 0)]
            try:
                time.sleep(5 if loaded else 0)  # let the load average notice the busy processes
                times = {setting: [] for setting in settings}
                chosen = default_threads_now()
                for round_index in range(args.rounds):
                    shift = round_index % len(settings)
                    for setting in settings[shift:] + settings[:shift]:
                        times[setting].append(run_job(Path(workdir) / "demo", setting, args.max_train_steps))
            finally:
                for hog in hogs:
                    hog.kill()
            label = f"loaded ({args.load} busy)" if loaded else "idle"
            results[label] = {
                "default_threads": chosen,
                "seconds": {
                    str(setting or f"default ({chosen})"): statistics.median(t) for setting, t in times.items()
                },
                "all_seconds": {str(setting or "default"): t for setting, t in times.items()},
            }
            print(label, json.dumps(results[label]["seconds"]))
    results["machine"] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
