"""AdaCLIP's hybrid semantic fusion (HSF): batched k-means over the most abnormal patches, in torch on any device.

The official code clusters each image's most abnormal patch embeddings with scikit-learn's `KMeans` on the CPU, one
image at a time, from a random k-means++ start. Here all images are clustered at once with the same Lloyd
iterations and stopping rules as scikit-learn (labels unchanged, or centre shift <= tolerance x mean feature
variance, then a last assignment), from a deterministic farthest-point start: the most abnormal patch first, then
repeatedly the patch farthest from its nearest chosen centre. From the same start scikit-learn gives the same
clusters (`tests/fixtures/make_adaclip_reference.py` checks it). The official random start is the option
`init="k-means++"` (scikit-learn's greedy k-means++, drawn from a torch generator). One difference: a cluster that
empties keeps its centre, where scikit-learn moves it to a far point; such a cluster is left out of the fusion.

Example:
    ```python
    >>> labels = kmeans_labels(points, num_clusters=20, max_iterations=300, tolerance=1e-4)  # (B, N)
    >>> fused = hybrid_semantic_fusion(patch_embeddings, layer_logits, 20, 100, 300, 1e-4)   # (B, C)
    ```
"""

import math

import torch
import torch.nn.functional as F


def farthest_point_centres(points: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Deterministic k-means start: point 0, then repeatedly the point farthest from its nearest chosen centre.

    Args:
        points: `(batch_size, N, D)`.
        num_clusters: K <= N.

    Returns:
        `(batch_size, K, D)` initial centres (copies of points; the first maximum wins ties).
    """
    batch = torch.arange(points.shape[0], device=points.device)
    chosen = [torch.zeros_like(batch)]
    nearest = ((points - points[:, :1]) ** 2).sum(-1)  # (B, N) squared distance to the nearest centre
    for _ in range(1, num_clusters):
        index = nearest.argmax(dim=1)
        chosen.append(index)
        nearest = torch.minimum(nearest, ((points - points[batch, index][:, None]) ** 2).sum(-1))
    return points[batch[:, None], torch.stack(chosen, dim=1)]


def kmeans_plus_plus_centres(
    points: torch.Tensor, num_clusters: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The official random k-means start: scikit-learn's greedy k-means++, for every image at once.

    The first centre is a uniformly drawn point; each next one is the best (lowest summed squared distance) of
    `2 + int(log(K))` candidates drawn with probability proportional to the squared distance to the nearest chosen
    centre. The same algorithm as scikit-learn's `KMeans(init="k-means++")`, though not its random stream.

    Args:
        points: `(batch_size, N, D)`.
        num_clusters: K <= N.
        generator: The random generator (on the points' device), or None for torch's global one.

    Returns:
        `(batch_size, K, D)` initial centres (copies of points).
    """
    batch_size, num_points, _ = points.shape
    batch = torch.arange(batch_size, device=points.device)
    trials = 2 + int(math.log(num_clusters))
    first = torch.randint(num_points, (batch_size,), generator=generator, device=points.device)
    chosen = [first]
    nearest = ((points - points[batch, first][:, None]) ** 2).sum(-1)  # (B, N)
    for _ in range(1, num_clusters):
        draws = torch.rand(batch_size, trials, generator=generator, device=points.device, dtype=points.dtype)
        cumulative = nearest.cumsum(dim=1)
        candidates = torch.searchsorted(cumulative, draws * cumulative[:, -1:]).clamp(max=num_points - 1)
        distances = ((points[batch[:, None], candidates][:, :, None] - points[:, None]) ** 2).sum(-1)  # (B, T, N)
        distances = torch.minimum(distances, nearest[:, None])
        best = distances.sum(dim=-1).argmin(dim=1)
        chosen.append(candidates[batch, best])
        nearest = distances[batch, best]
    return points[batch[:, None], torch.stack(chosen, dim=1)]


def _assign(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centre (`|c|^2 - 2 x.c`, as scikit-learn ranks them; first on ties)."""
    return ((centres**2).sum(-1)[:, None, :] - 2 * points @ centres.transpose(1, 2)).argmin(dim=-1)


def _update(points: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's points; an empty cluster keeps its centre."""
    one_hot = F.one_hot(labels, centres.shape[1]).to(points.dtype)  # (B, N, K)
    counts = one_hot.sum(dim=1)[..., None]
    sums = one_hot.transpose(1, 2) @ points
    return torch.where(counts > 0, sums / counts.clamp(min=1), centres)


@torch.no_grad()
def kmeans_labels(
    points: torch.Tensor,
    num_clusters: int,
    max_iterations: int,
    tolerance: float,
    init: str = "farthest_point",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lloyd's k-means of every image's points at once, with scikit-learn's stopping rules.

    Args:
        points: `(batch_size, N, D)`.
        num_clusters: K <= N.
        max_iterations: Most assignment + update rounds.
        tolerance: Stop when the summed squared centre shift is <= `tolerance` x the mean per-feature variance.
        init: The start: `"farthest_point"` ([`farthest_point_centres`], deterministic) or `"k-means++"`
            ([`kmeans_plus_plus_centres`], the official random start).
        generator: The random generator of the `"k-means++"` start, or None for torch's global one.

    Returns:
        `(batch_size, N)` cluster index of every point (long).
    """
    points = points - points.mean(dim=1, keepdim=True)  # as scikit-learn: better-conditioned distances
    threshold = tolerance * points.var(dim=1, unbiased=False).mean(dim=-1)  # (B,)
    if init == "k-means++":
        centres = kmeans_plus_plus_centres(points, num_clusters, generator)
    else:
        centres = farthest_point_centres(points, num_clusters)
    labels = torch.full(points.shape[:2], -1, dtype=torch.long, device=points.device)
    active = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    for _ in range(max_iterations):
        new_labels = _assign(points, centres)
        new_centres = _update(points, new_labels, centres)
        unchanged = (new_labels == labels).all(dim=1)
        settled = ((new_centres - centres) ** 2).sum(dim=(1, 2)) <= threshold
        labels = torch.where(active[:, None], new_labels, labels)
        centres = torch.where(active[:, None, None], new_centres, centres)
        # stopped by the tolerance: the labels are taken from the final centres (scikit-learn's last E-step)
        labels = torch.where((active & ~unchanged & settled)[:, None], _assign(points, centres), labels)
        active = active & ~unchanged & ~settled
        # the early exit only saves time (a settled image's labels and centres no longer change); an exported graph
        # (`torch.export`) cannot branch on data, so it runs all `max_iterations` rounds, with the same result
        if not torch.compiler.is_exporting() and not active.any():
            return labels
    return torch.where(active[:, None], _assign(points, centres), labels)


def hybrid_semantic_fusion(
    patch_embeddings: list[torch.Tensor],
    layer_logits: list[torch.Tensor],
    num_clusters: int,
    num_patches: int,
    max_iterations: int,
    tolerance: float,
    init: str = "farthest_point",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """HSF as the official code computes it: the mean of the cluster centres of the most abnormal patches.

    The patches are ranked by the abnormal probability of the layer-averaged logits; the top `num_patches` are
    clustered on their embeddings of all layers concatenated; a cluster's centre is the mean of its patches'
    embeddings over patches and layers; the fused feature is the normalised mean of the (non-empty) centres.
    Gradients flow through the embeddings, not through the ranking or the clustering.

    Args:
        patch_embeddings: One `(batch_size, N, C)` L2-normalised embedding per feature layer.
        layer_logits: One `(batch_size, N, 2)` (normal, abnormal) logit map per feature layer.
        num_clusters: k-means clusters (at most the number of patches taken).
        num_patches: How many of the most abnormal patches are clustered (at most N).
        max_iterations: Most k-means rounds.
        tolerance: k-means tolerance (see [`kmeans_labels`]).
        init: k-means start, `"farthest_point"` or `"k-means++"` (see [`kmeans_labels`]).
        generator: The random generator of the `"k-means++"` start, or None for torch's global one.

    Returns:
        `(batch_size, C)`, L2-normalised.
    """
    abnormal = torch.stack(layer_logits).mean(dim=0).softmax(dim=-1)[..., 1]  # (B, N)
    top = abnormal.topk(min(num_patches, abnormal.shape[1]), dim=1).indices  # most abnormal first
    index = top[..., None].expand(-1, -1, patch_embeddings[0].shape[-1])
    selected = [embeddings.gather(1, index) for embeddings in patch_embeddings]  # each (B, k, C)
    points = torch.cat(selected, dim=-1)
    labels = kmeans_labels(points, min(num_clusters, top.shape[1]), max_iterations, tolerance, init, generator)
    one_hot = F.one_hot(labels, min(num_clusters, top.shape[1])).to(selected[0].dtype)  # (B, k, K)
    counts = one_hot.sum(dim=1)  # (B, K)
    centres = one_hot.transpose(1, 2) @ torch.stack(selected).mean(dim=0) / counts.clamp(min=1)[..., None]
    occupied = (counts > 0).to(centres.dtype)
    fused = (centres * occupied[..., None]).sum(dim=1) / occupied.sum(dim=1, keepdim=True)
    return F.normalize(fused, dim=-1)


__all__ = ["farthest_point_centres", "hybrid_semantic_fusion", "kmeans_labels", "kmeans_plus_plus_centres"]
