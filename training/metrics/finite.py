"""Images a model scored NaN or infinite: counted over a whole run, then one error that says how many.

A checkpoint with NaN weights (or a NaN `image_std`) scores every image NaN. A threshold or a metric computed from
such scores is meaningless, so evaluation and calibration refuse them; they count the images first, so the error
says how many are affected (all of them: a damaged checkpoint; a few: the images to look at).

Example:
    ```python
    >>> non_finite = NonFiniteCount("normal images")
    >>> for scored in scored_batches:
    ...     non_finite.add(scored.scores, scored.anomaly_maps, categories)
    >>> non_finite.check()  # NonFiniteScoresError: the model produced NaN or infinite scores on 3 of 3 normal images
    ```
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

_SHOWN = 3


class NonFiniteScoresError(ValueError):
    """The model produced NaN or infinite scores: its weights or its preprocessing hold non-finite values."""


class NonFiniteCount:
    """Counts the images whose image score or anomaly map holds NaN or infinity, per category.

    Args:
        what: The images counted, for the error (e.g. `"images"`, `"normal images"`).
    """

    def __init__(self, what: str = "images") -> None:
        self.what = what
        self.count = 0
        self.total = 0
        self.per_category: Counter[str] = Counter()

    def add(
        self, scores: np.ndarray, anomaly_maps: Sequence[np.ndarray], categories: Sequence[str] | None = None
    ) -> np.ndarray:
        """Adds B images.

        Args:
            scores: `(B,)` image scores.
            anomaly_maps: B maps, each `(H, W)` (sizes may differ).
            categories: B category names, or None.

        Returns:
            `(B,)` bool: True where the image's score and every value of its map are finite.
        """
        finite = np.isfinite(np.asarray(scores, dtype=np.float64).reshape(-1))
        finite &= np.array([bool(np.isfinite(anomaly_map).all()) for anomaly_map in anomaly_maps], dtype=bool)
        self.total += finite.size
        self.count += int((~finite).sum())
        if categories is not None:
            self.per_category.update(category for category, ok in zip(categories, finite) if not ok)
        return finite

    def check(self) -> None:
        """Raises `NonFiniteScoresError` when any image counted so far was not finite."""
        if not self.count:
            return
        where = ""
        if self.per_category:
            shown = [f"{category}: {count}" for category, count in sorted(self.per_category.items())[:_SHOWN]]
            where = f" ({', '.join(shown)}{', ...' if len(self.per_category) > _SHOWN else ''})"
        raise NonFiniteScoresError(
            f"the model produced NaN or infinite scores on {self.count} of {self.total} {self.what}{where}: its "
            "weights or its preprocessor_config.json (image_mean, image_std) hold non-finite values; use an "
            "undamaged checkpoint"
        )


__all__ = ["NonFiniteCount", "NonFiniteScoresError"]
