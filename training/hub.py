"""Uploading a finished run folder to the Hub in one commit.

Example:
    ```python
    >>> push_folder("outputs/run", "user/clipada-mvtec", excluded=("checkpoints/",))
    ```
"""

from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi


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


__all__ = ["push_folder"]
