"""Train one model for all categories of a dataset with `accelerate` (one or many processes): CLIP-ADA or AnomalyCLIP.

Only the head trains (prompt vectors, projections, ...); CLIP stays frozen. With `--anomaly_source synthetic`
(CLIP-ADA's protocol, the default) every step turns the batch's normal images into DRAEM-style synthetic anomalies
on the device, so every epoch sees fresh ones; with `real` (the zero-shot protocol) the split's labelled images and
masks are used, e.g. another dataset's test split.
Checkpoints hold only the trainable weights, optimizer, scheduler, step and RNG states, and resume exactly.

`--num_processes N` starts N processes with accelerate itself (one per GPU, or gloo processes on a CPU); the run says
how many processes it uses, and warns when `accelerate launch` started fewer than it was asked for.

Example:
    ```bash
    clipada train --model_name_or_path openai/clip-vit-base-patch16 \\
        --dataset_name /data/mvtec_anomaly_detection --preset mvtec_ad --output_dir outputs/clipada-mvtec
    clipada train --num_processes 2 --model_name_or_path CKPT --dataset_name user/mvtec-ad --output_dir outputs/run
    ```
"""

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list

from inference.command_line import usage_errors
from inference.devices import configure_threads, default_num_threads
from inference.loading import ModelLoadError
from training.arguments import parse_args
from training.checkpointing import CHECKPOINTS_DIR, CheckpointError, resolve_checkpoint
from training.data import DatasetFormatError
from training.finish import FinishError, HubPushError, finish, push_results
from training.loop import restore_log, train_loop
from training.preparation import set_up
from training.run_dir import OutputDirError, RunDirectory

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a process killed by it
# Errors a user can fix (bad input, a folder in use, a damaged checkpoint): one line and exit code 2.
USER_ERRORS = (DatasetFormatError, CheckpointError, ModelLoadError, OutputDirError, FileNotFoundError, ValueError)
# Set by `--num_processes`: where each process writes its one-line error, and how many processes were asked for
ERROR_DIR_ENV = "CLIPADA_ERROR_DIR"
ASKED_PROCESSES_ENV = "CLIPADA_NUM_PROCESSES"


def _loggable(config: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.items()}


def train(args: argparse.Namespace) -> dict | None:
    """Runs the whole job; returns the evaluation metrics on the main process (None elsewhere or when skipped).

    User errors of the set-up phase, and a checkpoint or final model that cannot be written, exit with code 2 and
    one line; a failure inside a training step keeps its traceback. SIGTERM exits with code 143 after writing a
    checkpoint.
    """
    _user_errors_exit(_check_precision, args)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # Without CUDA, `accelerate launch --multi_gpu` would start independent processes; cpu=True makes them
        # one gloo process group instead.
        cpu=not torch.cuda.is_available(),
    )
    # processes of one machine share its cores
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    configure_threads(args.num_threads or max(1, default_num_threads() // local_processes))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("training").setLevel(logging.INFO)  # the run plan and the Hub upload
    _report_processes(accelerator)
    with contextlib.ExitStack() as stack:
        directory = _claim_output_dir(args, accelerator, stack)
        run = _user_errors_exit(set_up, args, accelerator)
        resumed_from = None
        if args.resume_from_checkpoint:
            resumed_from = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
            _user_errors_exit(restore_log, args, run, resumed_from)
        if args.with_tracking:
            accelerator.init_trackers("clipada", config=_loggable(vars(args)))
        if not _user_errors_exit(train_loop, args, run, resumed_from, only=(CheckpointError,)):
            raise SystemExit(PREEMPTED_EXIT_CODE)  # the checkpoint is written; a scheduler requeues the job
        metrics = _user_errors_exit(finish, args, run, directory, only=(FinishError,))
        if directory is not None:
            directory.mark_finished()
        if args.with_tracking:
            accelerator.end_training()
        if args.push_to_hub and accelerator.is_main_process:
            _user_errors_exit(push_results, args, only=(HubPushError,))
        return metrics


def _check_precision(args: argparse.Namespace) -> None:
    """fp16 needs a CUDA GPU (its loss scaling and half matmuls); on a CPU bf16 does the same job."""
    precision = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and not torch.cuda.is_available():
        flag = "--mixed_precision fp16" if args.mixed_precision else "ACCELERATE_MIXED_PRECISION=fp16 (accelerate)"
        raise ValueError(f"{flag} needs a CUDA GPU and none is available; on a CPU use --mixed_precision bf16 or no")


def _claim_output_dir(
    args: argparse.Namespace, accelerator: Accelerator, stack: contextlib.ExitStack
) -> RunDirectory | None:
    """The main process claims the run folder (one lock per run; the other processes write only into checkpoints)
    and tells the others whether it could, so that a refused folder is one line from every process."""
    directory, error = None, None
    if accelerator.is_main_process:
        sources = [args.model_name_or_path, args.dataset_name, args.eval_dataset_name, args.texture_dir]
        claim = RunDirectory(
            args.output_dir,
            overwrite=args.overwrite_output_dir,
            resume=args.resume_from_checkpoint,
            sources=[source for source in sources if source],
        )
        try:
            directory = stack.enter_context(claim)
        except ValueError as refused:  # OutputDirError, or a damaged marker (OutputFolderError)
            error = str(refused)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        if accelerator.is_main_process:
            _record_for_launcher(error)
            if not os.environ.get(ERROR_DIR_ENV):
                print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    return directory


def _report_processes(accelerator: Accelerator) -> None:
    """Says how many processes the run uses; warns when a launcher was asked for more than it started."""
    count = accelerator.num_processes
    accelerator.print(f"Training with {count} process{'es' if count > 1 else ''} on {accelerator.device.type}.")
    asked = _asked_processes()
    if asked is not None and asked > count and accelerator.is_main_process:
        print(
            f"warning: {asked if asked > 1 else 'several'} processes were asked for, but this run uses {count}: "
            "`accelerate launch --num_processes N` starts several only with --multi_gpu (on a CPU too); "
            "`clipada train --num_processes N` starts them itself",
            file=sys.stderr,
        )


def _asked_processes() -> int | None:
    """How many processes the launcher was asked for: ours sets it; `accelerate launch --num_processes N` without
    `--multi_gpu` starts one process but still sets `MASTER_PORT` (as for several), and names N on its command line."""
    if ASKED_PROCESSES_ENV in os.environ:
        return int(os.environ[ASKED_PROCESSES_ENV])
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ and "ACCELERATE_USE_CPU" in os.environ
    if launched_by_accelerate and "MASTER_PORT" in os.environ and "WORLD_SIZE" not in os.environ:
        return _launcher_num_processes() or 2
    return None


def _launcher_num_processes() -> int | None:
    """`--num_processes N` (or `--num_processes=N`) on the parent's (accelerate's) command line."""
    try:
        import psutil

        command = psutil.Process(os.getppid()).cmdline()
    except Exception:  # noqa: BLE001 (psutil missing, the parent gone, no permission: then we only know "several")
        return None
    for index, word in enumerate(command):
        value = command[index + 1] if word == "--num_processes" and index + 1 < len(command) else None
        if word.startswith("--num_processes="):
            value = word.split("=", 1)[1]
        if value is not None and value.isdigit():
            return int(value)
    return None


def _user_errors_exit(function, *arguments, only: tuple[type[BaseException], ...] = USER_ERRORS):
    """Runs `function`; an error of `only` is one line `error: ...` and exit code 2 (under `--num_processes` the
    launcher prints it, once, as the last line)."""
    if os.environ.get(ERROR_DIR_ENV):
        try:
            return function(*arguments)
        except only as error:
            _record_for_launcher(str(error))
            raise SystemExit(2) from None
    with usage_errors(*only):
        return function(*arguments)


def _record_for_launcher(message: str) -> None:
    """Under `--num_processes`, the launcher prints this process's error again as the last line."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        with contextlib.suppress(OSError):
            (Path(folder) / f"rank_{int(os.environ.get('RANK', '0')):05d}.txt").write_text(message)


# ---------------------------------------------------------------------------------------------- launching


def launch(argv: list[str], num_processes: int) -> None:
    """`clipada train --num_processes N`: starts N processes with accelerate (one per GPU; gloo on a CPU).

    The processes print as they go; when they fail, accelerate's own traceback is left out and the first process's
    error line is printed again as the last line; the exit code is theirs.
    """
    worker_argv = _without_num_processes(argv)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_machines", "1"]
    command += ["--num_processes", str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(_free_port())]
    command += ["-m", "training.train", *worker_argv]
    with tempfile.TemporaryDirectory(prefix="clipada-train-") as errors:
        environment = {**os.environ, ERROR_DIR_ENV: errors, ASKED_PROCESSES_ENV: str(num_processes)}
        environment.setdefault("TORCHELASTIC_ERROR_FILE", str(Path(errors) / "elastic.json"))
        process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)
        try:
            _relay_without_launcher_noise(process, Path(errors))
        except KeyboardInterrupt:
            process.wait()
            raise
        messages = sorted(Path(errors).glob("rank_*.txt"))
        if process.returncode != 0 and messages:
            print(f"error: {messages[0].read_text()}", file=sys.stderr)
            raise SystemExit(2)
    if process.returncode != 0:
        raise SystemExit(process.returncode)


def _relay_without_launcher_noise(process: subprocess.Popen, errors: Path) -> None:
    """Copies the processes' stderr through, leaving out torch elastic's log lines and its report of a failed
    process (a block framed by lines of `=`). A process's traceback (torch prefixes its lines with `[rankN]:`) is
    held back, and left out when a process recorded a user error: another process failing on bad input makes the
    rest lose their connection."""
    in_report, held = False, []
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        if line.startswith("=" * 20):
            in_report = not in_report
            continue
        if in_report or "torch/distributed/" in line or "torch.distributed.elastic" in line:
            continue
        if line.startswith("[rank"):
            held.append(line)
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    process.wait()
    if not any(errors.glob("rank_*.txt")):
        sys.stderr.writelines(held)


def _without_num_processes(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--num_processes":
            skip = True
        elif not word.startswith("--num_processes="):
            kept.append(word)
    return kept


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launched() -> bool:
    """True inside a process started by a launcher (accelerate, torchrun): it must not launch again."""
    return ERROR_DIR_ENV in os.environ or "LOCAL_RANK" in os.environ or "ACCELERATE_USE_CPU" in os.environ


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.num_processes and args.num_processes > 1 and not _launched():
        launch(list(sys.argv[1:] if argv is None else argv), args.num_processes)
        return None
    try:
        return train(args)
    except KeyboardInterrupt:
        print(
            f"interrupted: training stopped; resume with --resume_from_checkpoint latest "
            f"(checkpoints in {Path(args.output_dir) / CHECKPOINTS_DIR})",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def cli(argv: list[str] | None = None) -> None:
    """`clipada train` (alias `clipada-train`, `python -m training.train`)."""
    main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch 2.13 sometimes aborts one rank during interpreter teardown ("terminate called without an active
        # exception") after all work is done; everything is saved and flushed, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


__all__ = ["PREEMPTED_EXIT_CODE", "USER_ERRORS", "cli", "launch", "main", "parse_args", "train"]


if __name__ == "__main__":
    cli()
