"""Uploading a finished run folder to the Hub in one commit; `python -m training.hub RUN REPO` pushes one later.

Example:
    ```python
    >>> push_folder("outputs/run", "user/clipada-mvtec", excluded=("checkpoints/",))
    >>> push_run("outputs/run", "user/clipada-mvtec")  # the final model, without checkpoints and logs
    ```

    ```bash
    python -m training.hub outputs/run user/clipada-mvtec   # after `clipada train --push_to_hub` failed offline
    ```
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

# what a run folder holds that is not the model: checkpoints, trackers' logs, saved predictions, our markers
RUN_EXCLUDED = (
    "checkpoints/",
    "clipada/",
    "runs/",
    "evaluation/predictions/",
    ".clipada_",
    ".partial_",
    "training_log.json.tmp",
)


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    excluded: Sequence[str] = (),
    commit_message: str = "Upload CLIP-ADA model",
) -> str:
    """Uploads every file of `folder` whose relative path does not start with one of `excluded`; returns the
    commit URL. The repository is created when missing."""
    folder = Path(folder)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.relative_to(folder).as_posix().startswith(tuple(excluded))
    ]
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    return api.create_commit(repo_id, operations, commit_message=commit_message).commit_url


def push_run(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Uploads a finished run folder: the model, its card and evaluation, not checkpoints or logs."""
    return push_folder(folder, repo_id, token=token, excluded=RUN_EXCLUDED, commit_message="Upload CLIP-ADA model")


def main(argv: list[str] | None = None) -> str:
    """`python -m training.hub RUN_FOLDER REPO_ID [--hub_token T]`: push a finished run."""
    parser = argparse.ArgumentParser(description="Push a finished training run's model to the Hub.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id")
    parser.add_argument("--hub_token", default=None)
    args = parser.parse_args(argv)
    if not (args.folder / "model.safetensors").is_file():
        parser.error(f"{args.folder} holds no finished run (no model.safetensors)")
    try:
        url = push_run(args.folder, args.repo_id, token=args.hub_token)
    except (OSError, ValueError) as error:
        print(f"error: could not push {args.folder} to {args.repo_id}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(url)
    return url


__all__ = ["RUN_EXCLUDED", "push_folder", "push_run"]


if __name__ == "__main__":
    main()
