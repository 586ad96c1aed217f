"""MVTec AD 2's SegF1 and Real-IAD's sample-level I-AUROC as an `evaluate` module: a shell over
`training.metrics.segf1` and `training.metrics.sample_level`.

Load it by path (it needs this package installed; `BENCHMARK_EVALUATE_MODULE_PATH` in `training.metrics` is this file):

Example:
    ```python
    >>> import evaluate
    >>> from training.metrics import BENCHMARK_EVALUATE_MODULE_PATH
    >>> metric = evaluate.load(BENCHMARK_EVALUATE_MODULE_PATH)  # a local path: works offline
    >>> metric.compute(
    ...     predictions=anomaly_maps,  # one (H, W) map per image
    ...     references=masks,  # one (H, W) mask per image
    ...     image_scores=image_scores,  # (N,)
    ...     image_labels=image_labels,  # (N,)
    ...     sample_ids=sample_ids,  # (N,) the part each view shows
    ...     segf1_threshold=0.71,  # e.g. mean + 3 std of the validation pixel scores
    ... )
    ```
"""

from __future__ import annotations

import datasets
import evaluate

# Absolute imports: `evaluate.load` copies this file into its module cache and imports it from there.
from training.metrics.sample_level import sample_level_metrics
from training.metrics.segf1 import seg_f1

_CITATION = """\
@article{heckler2025mvtecad2,
  title={The MVTec AD 2 Dataset: Advanced Scenarios for Unsupervised Anomaly Detection},
  author={Heckler-Kram, Lars and Neudeck, Jan-Hendrik and Scheler, Ulla and K{\\"o}nig, Rebecca and Steger, Carsten},
  journal={arXiv preprint arXiv:2503.21622},
  year={2025}
}
"""

_DESCRIPTION = """\
The metrics two benchmarks of 2025-26 report beside AUROC: MVTec AD 2's SegF1, the pixel F1 score 2 TP / (2 TP + FP +
FN) of maps binarized at a threshold chosen without test labels (the authors' baseline: mean + 3 std of the pixel
scores of the normal validation images), TP/FP/FN counted over all pixels of all images; and Real-IAD's sample-level
image AUROC and F1-max, a part's score being the max (or mean) of its views' image scores and its label the max of
theirs.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D float arrays): One anomaly map per image (sizes may differ between images).
    references (`list` of 2-D arrays): One mask per image, same size as its map; > 0.5 is anomalous.
    image_scores (`list` of `float`): One anomaly score per image (view).
    image_labels (`list` of `int`): 1 for an anomalous image, 0 for a normal one.
    sample_ids (`list` of `str`): The sample (part) each image shows; its views share one.
    segf1_threshold (`float`, *optional*): Binarize the maps at this score ("anomalous when score >= threshold") and
        return `seg_f1`; left out without one.
    sample_reduction (`str`, *optional*, defaults to "max"): "max" or "mean" of the views' scores.
Returns:
    sample_image_auroc, sample_image_f1_max (`float` in [0, 1], `nan` without defective or normal samples),
    num_samples (`int`), and with `segf1_threshold` seg_f1 (`float` in [0, 1], `nan` when nothing is anomalous or
    flagged).
Examples:
    >>> metric = evaluate.load(BENCHMARK_EVALUATE_MODULE_PATH)
    >>> metric.compute(
    ...     predictions=[[[0.9, 0.1]], [[0.2, 0.1]]], references=[[[1, 0]], [[0, 0]]],
    ...     image_scores=[0.9, 0.2], image_labels=[1, 0], sample_ids=["a", "b"], segf1_threshold=0.5,
    ... )["seg_f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipAdaBenchmarks(evaluate.Metric):
    """SegF1 and sample-level image metrics; `compute` returns their dict."""

    def _info(self) -> evaluate.MetricInfo:
        """Declares per-image inputs: 2-D maps and masks of any size, a score, a label and a sample id."""
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "image_scores": datasets.Value("float64"),
                    "image_labels": datasets.Value("int64"),
                    "sample_ids": datasets.Value("string"),
                }
            ),
            reference_urls=["https://www.mvtec.com/company/research/datasets/mvtec-ad-2"],
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        image_scores: list,
        image_labels: list,
        sample_ids: list,
        segf1_threshold: float | None = None,
        sample_reduction: str = "max",
    ) -> dict[str, float | int]:
        """Computes the sample-level metrics and, with a threshold, SegF1."""
        results: dict[str, float | int] = dict(
            sample_level_metrics(image_scores, image_labels, sample_ids, sample_reduction)
        )
        if segf1_threshold is not None:
            results["seg_f1"] = seg_f1(predictions, references, segf1_threshold)
        return results


__all__ = ["ClipAdaBenchmarks"]
