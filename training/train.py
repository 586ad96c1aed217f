"""Train one CLIP-ADA model for all categories of MVTec-AD or VisA with `accelerate` (one or many processes).

Only the head trains (prompt vectors, projections, similarity scale/bias); CLIP stays frozen. Every step turns
the batch's normal images into DRAEM-style synthetic anomalies on the device, so every epoch sees fresh ones.
Checkpoints hold only the trainable weights, optimizer, scheduler, step and RNG states, and resume exactly.

Example:
    ```bash
    accelerate launch training/train.py --model_name_or_path openai/clip-vit-base-patch16 \\
        --dataset_name /data/mvtec_anomaly_detection --preset mvtec_ad --output_dir outputs/clipada-mvtec
    python -m training.train --model_name_or_path CKPT --dataset_name user/mvtec-ad --max_train_steps 100
    ```
"""

import argparse
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig

from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training.data import DatasetFormatError, load_anomaly_dataset
from training.eval import evaluate_model, write_evaluation
from training.model_card import write_model_card
from training.synthesis import SyntheticAnomalyGenerator

logger = get_logger(__name__)

# The paper's schedules (METHOD.md): epochs, batch size and the epochs where the learning rate is multiplied by 0.2.
PRESETS = {
    "mvtec_ad": {"num_train_epochs": 800, "per_device_train_batch_size": 16, "lr_milestones": [400, 700]},
    "visa": {"num_train_epochs": 500, "per_device_train_batch_size": 64, "lr_milestones": [250]},
}
LR_DECAY = 0.2
HEAD_CONFIG_FIELDS = (
    "feature_layer",
    "num_prompt_vectors",
    "prompt_template",
    "num_refinements",
    "refinement_loss_weight",
    "detach_refinement_input",
    "image_score_top_k",
    "smoothing_sigma",
    "use_feature_layernorm",
)
CHECKPOINTS_DIR = "checkpoints"
TRAINABLE_WEIGHTS = "trainable_weights.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model_name_or_path",
        default="openai/clip-vit-base-patch16",
        help="A CLIP checkpoint (Hub id or folder) to start from, or a CLIP-ADA checkpoint to continue.",
    )
    parser.add_argument(
        "--dataset_name",
        required=True,
        help="A raw MVTec-AD / VisA folder, a folder saved by training.prepare_dataset, or a Hub id.",
    )
    parser.add_argument(
        "--dataset",
        choices=["mvtec_ad", "visa"],
        default=None,
        help="Layout of a raw folder, when it cannot be inferred.",
    )
    parser.add_argument("--categories", nargs="+", default=None, help="Train on these categories only.")
    parser.add_argument(
        "--skip_missing_files",
        action="store_true",
        help="VisA: skip split-csv rows whose files are missing (a partial download).",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="The paper's schedule: MVTec-AD 800 epochs, batch 16, lr x0.2 at 400 and 700; "
        "VisA 500 epochs, batch 64, lr x0.2 at 250. Explicit flags win.",
    )
    parser.add_argument("--per_device_train_batch_size", type=int, default=None, help="Default 16.")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=1e-3,
        help="AdamW learning rate (the paper's value was lost in the text; 1e-3 suits the linear head).",
    )
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--num_train_epochs", type=int, default=None, help="Default 10.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs when set.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--lr_milestones",
        type=int,
        nargs="*",
        default=None,
        help="Epochs at which the learning rate is multiplied by 0.2.",
    )
    parser.add_argument(
        "--image_size", type=int, default=None, help="Input resolution (default: the CLIP's own, 224 for ViT-B/16)."
    )
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--checkpointing_steps", default=None, help="Save a resumable checkpoint every N optimizer steps, or 'epoch'."
    )
    parser.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    parser.add_argument("--with_tracking", action="store_true", help="Log loss and learning rate.")
    parser.add_argument("--report_to", default="tensorboard")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    parser.add_argument(
        "--texture_dir",
        default=None,
        help="Folder of anomaly-source textures (DTD in the paper). Default: procedural textures "
        "and other images of the batch (no download).",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--skip_evaluation", action="store_true", help="Do not evaluate on the test split at the end.")
    parser.add_argument("--num_heatmaps", type=int, default=4, help="Heatmap PNGs per category at the end.")
    parser.add_argument("--save_predictions", action="store_true")
    head = parser.add_argument_group("CLIPADAConfig overrides")
    head.add_argument("--feature_layer", type=int)
    head.add_argument("--num_prompt_vectors", type=int)
    head.add_argument("--prompt_template")
    head.add_argument("--num_refinements", type=int)
    head.add_argument("--refinement_loss_weight", type=float)
    head.add_argument("--detach_refinement_input", type=_bool, metavar="{true,false}")
    head.add_argument("--image_score_top_k", type=int)
    head.add_argument("--smoothing_sigma", type=float)
    head.add_argument("--use_feature_layernorm", type=_bool, metavar="{true,false}")
    args = parser.parse_args(argv)
    return _resolve_defaults(parser, args)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _resolve_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    preset = PRESETS.get(args.preset, {})
    defaults = {"num_train_epochs": 10, "per_device_train_batch_size": 16, "lr_milestones": []}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, default))
    checks = {
        "--per_device_train_batch_size": args.per_device_train_batch_size >= 1,
        "--per_device_eval_batch_size": args.per_device_eval_batch_size >= 1,
        "--gradient_accumulation_steps": args.gradient_accumulation_steps >= 1,
        "--num_train_epochs": args.num_train_epochs >= 1,
        "--max_train_steps": args.max_train_steps is None or args.max_train_steps >= 1,
        "--learning_rate": args.learning_rate > 0,
        "--image_size": args.image_size is None or args.image_size >= 1,
        "--lr_milestones": all(m >= 1 for m in args.lr_milestones),
    }
    for flag, valid in checks.items():
        if not valid:
            parser.error(f"{flag} has an invalid value")
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}")
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = Path(args.output_dir).resolve().name
    return args


# ---------------------------------------------------------------------------------------------- building blocks


def build_model(args: argparse.Namespace) -> CLIPADAForAnomalySegmentation:
    """A CLIP-ADA checkpoint is continued as is; any other CLIP checkpoint gets a fresh head via `from_clip`."""
    overrides = {name: getattr(args, name) for name in HEAD_CONFIG_FIELDS if getattr(args, name) is not None}
    if _is_clipada(args.model_name_or_path):
        frozen_shape = {"num_refinements", "num_prompt_vectors", "prompt_template"} & set(overrides)
        if frozen_shape:
            raise ValueError(
                f"{sorted(frozen_shape)} cannot change when continuing CLIP-ADA checkpoint "
                f"{args.model_name_or_path}; start from a CLIP checkpoint instead."
            )
        return CLIPADAForAnomalySegmentation.from_pretrained(args.model_name_or_path, **overrides)
    return CLIPADAForAnomalySegmentation.from_clip(args.model_name_or_path, **overrides)


def _is_clipada(model_name_or_path: str) -> bool:
    try:
        return AutoConfig.from_pretrained(model_name_or_path).model_type == CLIPADAConfig.model_type
    except ValueError:  # an unregistered model type, or a CLIPADA config saved by a different version
        return False


def load_dataset_from_args(args: argparse.Namespace):
    return load_anomaly_dataset(
        args.dataset_name, dataset=args.dataset, categories=args.categories, allow_missing_files=args.skip_missing_files
    )


def build_train_dataloader(
    args: argparse.Namespace, accelerator: Accelerator, processor: CLIPADAImageProcessor, train_split
) -> DataLoader:
    """Normal training images of every category as uint8 batches `(B, 3, H, W)` at the input size.

    Images are decoded and resized once, before the first epoch, and cached by `datasets`: decoding a 900 px PNG
    every step would cost more than a GPU training step.
    """
    with accelerator.main_process_first():
        labels = np.asarray(train_split["label"])
        if (labels != 0).any():  # training sees no real anomaly
            train_split = train_split.select(np.flatnonzero(labels == 0))
        if len(train_split) == 0:
            raise ValueError(f"The train split of {args.dataset_name} has no normal images.")
        train_split = resize_once(train_split, processor)

    def collate(examples: list[dict]) -> torch.Tensor:
        return torch.stack([example["pixels"] for example in examples])

    return DataLoader(
        train_split,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=False,
    )


def resize_once(dataset, processor: CLIPADAImageProcessor):
    """`image` column -> `pixels` column, uint8 `(3, H, W)` at the processor's size, as torch tensors."""
    height, width = processor.size["height"], processor.size["width"]

    def resize(batch: dict) -> dict:
        pixels = processor(images=batch["image"], do_normalize=False)["pixel_values"]
        return {"pixels": (pixels * 255).round().to(torch.uint8).numpy()}

    features = datasets.Features({"pixels": datasets.Array3D(shape=(3, height, width), dtype="uint8")})
    resized = dataset.map(
        resize,
        batched=True,
        batch_size=32,
        remove_columns=dataset.column_names,
        features=features,
        desc=f"Resizing training images to {height}x{width} once",
    )
    return resized.with_format("torch")


def build_scheduler(optimizer: torch.optim.Optimizer, milestones_epochs: list[int], steps_per_epoch: int):
    """Step-wise learning rate: multiplied by 0.2 at each milestone epoch."""
    milestone_steps = sorted(epoch * steps_per_epoch for epoch in milestones_epochs)

    def factor(step: int) -> float:
        return LR_DECAY ** sum(step >= milestone for milestone in milestone_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def synthesis_generator(seed: int, epoch: int, micro_batch_index: int) -> torch.Generator:
    """A generator for one micro-batch, seeded by (seed, epoch, its index in the global batch order).

    Anomalies then depend on the data order alone, not on how many processes share the work or on resuming:
    N processes and one process with N accumulation steps synthesise the same anomalies for the same images.
    """
    state = np.random.SeedSequence([seed, epoch, micro_batch_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TrainingProgress:
    """Optimizer steps done, checkpointed with the state (the RNG states are accelerate's own)."""

    def __init__(self):
        self.completed_steps = 0

    def state_dict(self) -> dict:
        return {"completed_steps": self.completed_steps}

    def load_state_dict(self, state: dict) -> None:
        self.completed_steps = int(state["completed_steps"])


def register_trainable_checkpoint_hooks(accelerator: Accelerator) -> None:
    """Make `save_state` / `load_state` write and read only the trainable weights, never the frozen CLIP."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for index, model in enumerate(models):
            if accelerator.is_main_process:
                save_file(trainable_state(model, accelerator), os.path.join(output_dir, f"{index}_{TRAINABLE_WEIGHTS}"))
        weights.clear()  # accelerate itself saves no model weights

    def load_hook(models: list, input_dir: str) -> None:
        for index, model in enumerate(list(models)):
            model = accelerator.unwrap_model(model)
            path = os.path.join(input_dir, f"{index}_{TRAINABLE_WEIGHTS}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Checkpoint {input_dir} has no {index}_{TRAINABLE_WEIGHTS}.")
            state = load_file(path)
            expected = {name for name, p in model.named_parameters() if p.requires_grad}
            if set(state) != expected:
                raise ValueError(f"Checkpoint {path} holds {sorted(state)}, but the model trains {sorted(expected)}.")
            model.load_state_dict(state, strict=False)
        models.clear()  # accelerate itself loads no model weights

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def trainable_state(model, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on the CPU."""
    model = accelerator.unwrap_model(model)
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def check_replicas_in_sync(accelerator: Accelerator, model) -> None:
    """Raises when the processes' trainable weights differ (they must be replicas after every step)."""
    if accelerator.num_processes == 1:
        return
    flat = torch.cat([p.flatten().float() for p in trainable_state(model, accelerator).values()])
    gathered = accelerator.gather(flat[None].to(accelerator.device)).cpu()
    difference = (gathered - gathered[0]).abs().max().item()
    if difference != 0:
        raise RuntimeError(f"Trainable weights differ across processes (max difference {difference}).")
    accelerator.print(f"Trainable weights identical on all {accelerator.num_processes} processes.")


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int) -> Path:
    """Writes `checkpoints/step_N` atomically: into a temporary folder that is renamed once complete."""
    checkpoints = Path(output_dir) / CHECKPOINTS_DIR
    final = checkpoints / f"step_{step}"
    partial = checkpoints / f".partial_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path:
    """'latest' -> the highest complete `checkpoints/step_N` (partial writes are never named step_N)."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {path} is not a folder.")
        return path
    checkpoints = sorted(
        (p for p in (Path(output_dir) / CHECKPOINTS_DIR).glob("step_*") if p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}."
        )
    return checkpoints[-1]


# ---------------------------------------------------------------------------------------------- the training loop


def train(args: argparse.Namespace) -> dict | None:
    """Runs the whole job; returns the evaluation metrics on the main process (None elsewhere or when skipped)."""
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
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger(__name__).setLevel(logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    model = build_model(args)
    image_size = args.image_size or model.config.vision_config.image_size
    processor = CLIPADAImageProcessor(size=image_size)
    synthesizer = SyntheticAnomalyGenerator(texture_dir=args.texture_dir, image_size=image_size)
    with accelerator.main_process_first():
        dataset = load_dataset_from_args(args)
    dataloader = build_train_dataloader(args, accelerator, processor, dataset["train"])

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    batches_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    # accelerate steps a prepared scheduler once per process for every optimizer step
    scheduler = build_scheduler(optimizer, args.lr_milestones, steps_per_epoch * accelerator.num_processes)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    register_trainable_checkpoint_hooks(accelerator)

    if args.with_tracking:
        accelerator.init_trackers("clipada", config=_loggable(vars(args)))
    _log_plan(accelerator, args, model, dataloader, max_steps, num_epochs)

    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
    start_epoch, resume_batch = divmod(progress.completed_steps * args.gradient_accumulation_steps, batches_per_epoch)

    bar = tqdm(
        total=max_steps,
        initial=progress.completed_steps,
        disable=not accelerator.is_local_main_process,
        mininterval=1.0,
    )
    model.train()
    for epoch in range(start_epoch, num_epochs):
        dataloader.set_epoch(epoch)
        skip = resume_batch if epoch == start_epoch else 0
        epoch_loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for batch_index, images in enumerate(epoch_loader, start=skip):
            micro_batch = batch_index * accelerator.num_processes + accelerator.process_index
            loss = training_step(
                accelerator,
                model,
                optimizer,
                scheduler,
                processor,
                synthesizer,
                images,
                synthesis_generator(args.seed, epoch, micro_batch),
            )
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if args.with_tracking:
                accelerator.log(
                    {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "epoch": epoch},
                    step=progress.completed_steps,
                )
            if _is_checkpoint_step(args, progress.completed_steps, end_of_epoch=False):
                save_checkpoint(accelerator, args.output_dir, progress.completed_steps)
            if progress.completed_steps >= max_steps:
                break
        if _is_checkpoint_step(args, progress.completed_steps, end_of_epoch=True):
            save_checkpoint(accelerator, args.output_dir, progress.completed_steps)
        if progress.completed_steps >= max_steps:
            break
    bar.close()
    return finish(accelerator, args, model, processor, dataset)


def training_step(accelerator, model, optimizer, scheduler, processor, synthesizer, images, generator) -> float:
    """Synthesise anomalies, forward with their masks, backward and (when gradients sync) one optimizer step.

    Args:
        images: `(B, 3, H, W)` uint8 normal images on the device.
    """
    with accelerator.accumulate(model):
        images = images.float() / 255
        images, masks = synthesizer(images, generator=generator)
        outputs = model(pixel_values=processor.normalize(images), labels=masks)
        accelerator.backward(outputs.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return outputs.loss.item()


def _is_checkpoint_step(args: argparse.Namespace, step: int, end_of_epoch: bool) -> bool:
    if args.checkpointing_steps == "epoch":
        return end_of_epoch
    return not end_of_epoch and args.checkpointing_steps is not None and step % int(args.checkpointing_steps) == 0


def finish(accelerator: Accelerator, args: argparse.Namespace, model, processor, dataset) -> dict | None:
    """Save model and processor, evaluate on the test split, write the model card, push when asked."""
    accelerator.wait_for_everyone()
    check_replicas_in_sync(accelerator, model)
    metrics = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model).eval()
        model.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        if not args.skip_evaluation:
            metrics = evaluate_on_test_split(args, model, processor, dataset, accelerator.device)
        write_model_card(args.output_dir, vars(args), metrics)
        if args.push_to_hub:
            push_output_dir(args)
    if args.with_tracking:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return metrics


def evaluate_on_test_split(args: argparse.Namespace, model, processor, dataset, device) -> dict | None:
    if "test" not in dataset or len(dataset["test"]) == 0:
        logger.warning("No test split: skipping evaluation.")
        return None
    evaluation_dir = Path(args.output_dir) / "evaluation"
    per_category, mean = evaluate_model(
        model,
        processor,
        dataset["test"],
        device=device,
        batch_size=args.per_device_eval_batch_size,
        output_dir=evaluation_dir,
        save_predictions=args.save_predictions,
        num_heatmaps=args.num_heatmaps,
    )
    table = write_evaluation(evaluation_dir, per_category, mean)
    print(table)
    return {"per_category": per_category, "mean": mean}


def push_output_dir(args: argparse.Namespace) -> None:
    """Uploads the final model folder (safetensors, remote code, processor, card, metrics, heatmaps) in one commit;
    checkpoints, tracking logs and saved predictions stay local."""
    from huggingface_hub import CommitOperationAdd, HfApi

    output_dir = Path(args.output_dir)
    excluded = (f"{CHECKPOINTS_DIR}/", "clipada/", "runs/", "evaluation/predictions/")
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(output_dir).as_posix(), path_or_fileobj=str(path))
        for path in sorted(output_dir.rglob("*"))
        if path.is_file() and not path.relative_to(output_dir).as_posix().startswith(excluded)
    ]
    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id, exist_ok=True).repo_id
    commit = api.create_commit(repo_id, operations, commit_message="Upload CLIP-ADA model")
    logger.info(f"Pushed {len(operations)} files to {commit.commit_url}", main_process_only=True)


def _log_plan(accelerator, args, model, dataloader, max_steps: int, num_epochs: int) -> None:
    unwrapped = accelerator.unwrap_model(model)
    trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    logger.info(
        f"***** Training CLIP-ADA ***** images={len(dataloader.dataset)} epochs={num_epochs} steps={max_steps} "
        f"batch/device={args.per_device_train_batch_size} processes={accelerator.num_processes} "
        f"accumulation={args.gradient_accumulation_steps} trainable_parameters={trainable:,} "
        f"R={unwrapped.config.num_refinements} feature_layer={unwrapped.config.feature_layer}",
        main_process_only=True,
    )


def _loggable(config: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.items()}


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    try:
        metrics = train(args)
    except (DatasetFormatError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch 2.13 sometimes aborts one rank during interpreter teardown ("terminate called without an active
        # exception") after all work is done; everything is saved and flushed, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
