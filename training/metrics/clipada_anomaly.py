"""The anomaly metrics as an `evaluate` module: a thin shell over `training.metrics.anomaly`.

Load it by path (it needs this package installed; `EVALUATE_MODULE_PATH` in `training.metrics` is this file):

Example:
    ```python
    >>> import evaluate
    >>> from training.metrics import EVALUATE_MODULE_PATH
    >>> metric = evaluate.load(EVALUATE_MODULE_PATH)  # a local path: works offline
    >>> results = metric.compute(
    ...     predictions=anomaly_maps,  # (N, H, W) floats, one anomaly map per image
    ...     references=masks,  # (N, H, W) {0, 1} ground-truth masks
    ...     image_scores=image_scores,  # (N,) floats
    ...     image_labels=image_labels,  # (N,) {0, 1}
    ...     image_threshold=0.62,  # optional: also the false-reject and escape rates at this threshold
    ... )
    ```
"""

from __future__ import annotations

import datasets
import evaluate

# An absolute import: `evaluate.load` copies this file into its module cache and imports it from there.
from training.metrics.anomaly import anomaly_metrics

_CITATION = """\
@inproceedings{bergmann2019mvtec,
  title={MVTec AD -- A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection},
  author={Bergmann, Paul and Fauser, Michael and Sattlegger, David and Steger, Carsten},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
Industrial anomaly-detection metrics as the CLIP-ADA paper and the MVTec-AD / VisA literature report
them, for one category: image AUROC, pixel AUROC, pixel average precision (P-mAP), AUPRO (per-region
overlap integrated up to FPR 0.3, divided by 0.3, on the exact curve) and F1-max (image and pixel).
All are computed exactly by sorting (ties handled), with numpy and scipy only. Also the operating points an
inspection line signs off: overkill (share of normal images rejected) at 2, 5 and 10 % escape, as AdaptCLIP
defines it, and, given an image threshold, the false-reject and escape rates with their counts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D float arrays): One anomaly map per image (sizes may differ between images).
    references (`list` of 2-D arrays): One ground-truth mask per image, same size as its map; a pixel is
        anomalous where mask > 0.5 ({0, 1}, bool, {0, 255} and defect-class ids all work).
    image_scores (`list` of `float`): One anomaly score per image.
    image_labels (`list` of `int`): 1 for an anomalous image, 0 for a normal one.
    aupro_fpr_limit (`float`, *optional*, defaults to 0.3): Upper FPR limit of the AUPRO integral.
    image_threshold (`float`, *optional*): A decision threshold ("anomalous when score >= threshold", compared
        in float32): also report the false-reject and escape rates at it.
Returns:
    image_auroc, pixel_auroc, pixel_ap, aupro, image_f1_max, pixel_f1_max (`float` in [0, 1]): `nan` when
    only one class is present (e.g. no anomalous pixel, or no normal image).
    overkill_at_2pct_escape, overkill_at_5pct_escape, overkill_at_10pct_escape (`float` in [0, 1]): the share
    of normal images scoring >= the 2/5/10 % quantile (linear) of the defective images' scores; `None`, with an
    `overkill` note saying why, without defective or normal images.
    With `image_threshold`: image_threshold, false_reject_rate, normal_images_rejected, normal_images,
    escape_rate, defective_images_passed, defective_images (rates in [0, 1] or `None`, counts `int`), and an
    `operating_point` note when a rate is `None`.
Examples:
    >>> metric = evaluate.load(EVALUATE_MODULE_PATH)
    >>> results = metric.compute(
    ...     predictions=[[[0.9, 0.1], [0.2, 0.3]], [[0.1, 0.2], [0.1, 0.1]]],
    ...     references=[[[1, 0], [0, 0]], [[0, 0], [0, 0]]],
    ...     image_scores=[0.9, 0.2],
    ...     image_labels=[1, 0],
    ... )
    >>> results["pixel_auroc"], results["aupro"]
    (1.0, 1.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipAdaAnomaly(evaluate.Metric):
    """Anomaly-detection metrics for one category; `compute` returns the dict of `anomaly_metrics`."""

    def _info(self) -> evaluate.MetricInfo:
        """Declares per-image inputs: 2-D maps and masks of any size, a score and a label."""
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
                }
            ),
            reference_urls=["https://www.mvtec.com/company/research/datasets/mvtec-ad"],
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        image_scores: list,
        image_labels: list,
        aupro_fpr_limit: float = 0.3,
        image_threshold: float | None = None,
    ) -> dict[str, float | int | str | None]:
        """Computes all six metrics, the overkill values and, with `image_threshold`, the operating point."""
        return anomaly_metrics(predictions, references, image_scores, image_labels, aupro_fpr_limit, image_threshold)


__all__ = ["ClipAdaAnomaly"]
