"""Shared pytest fixtures: quiet, offline transformers, tiny random CLIP checkpoints and one shared training run."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if "HF_DATASETS_CACHE" not in os.environ:  # keep the user's datasets cache clean of test datasets
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="clipada-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)  # one per session
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from run_helpers import training_args  # noqa: E402
from tiny_clip import make_tiny_clip  # noqa: E402


@pytest.fixture
def isolated_datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow caches of a test in its own temporary folder, without progress bars."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if enabled:
        datasets.enable_progress_bars()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP checkpoint with its tokenizer, saved like a Hub CLIP folder."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    make_tiny_clip(folder)
    return folder


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A tiny CLIP checkpoint (`clip/`) and a tiny demo dataset (`data/`: 2 categories x 6 normal training images,
    32 px) for training runs."""
    from training.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("training")
    make_tiny_clip(root / "clip")
    make_demo_dataset(root / "data", num_train=6, num_test_good=2, num_test_defect=2, image_size=32)
    return root


@pytest.fixture(scope="session")
def trained_run(workspace, tmp_path_factory) -> Path:
    """ONE finished tiny run shared by the tests that only read it (copy it before changing anything): 4 steps,
    checkpoints `step_2` and `step_4`, no evaluation."""
    from training import train

    output_dir = tmp_path_factory.mktemp("shared_run") / "run"
    train.main(
        training_args(
            workspace, output_dir, "--max_train_steps", "4", "--checkpointing_steps", "2", "--skip_evaluation"
        )
    )
    return output_dir


@pytest.fixture
def hub_uploads(monkeypatch) -> list[dict]:
    """Intercepts uploads at the huggingface_hub API boundary; each commit is recorded as
    {"repo_id": ..., "files": {path_in_repo: bytes}} and nothing leaves the machine."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    commits: list[dict] = []

    def create_repo(self, repo_id, *args, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *args, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            if isinstance(source, (str, Path)):
                files[operation.path_in_repo] = Path(source).read_bytes()
            elif isinstance(source, bytes):
                files[operation.path_in_repo] = source
            else:
                files[operation.path_in_repo] = source.read()
        commits.append({"repo_id": repo_id, "files": files, "repo_type": kwargs.get("repo_type")})
        url = f"https://huggingface.co/{repo_id}/commit/0000000"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, *args, **kwargs: None)  # a server-side model-card check
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return commits
