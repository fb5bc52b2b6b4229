"""Image (and video) generation metrics as distance math over a pluggable feature network.

No pretrained Inception, CLIP or I3D weights can be downloaded in this project, so none are bundled and none
are fetched. You bring the feature network: a TorchScript file (`torch.jit.save`) or a safetensors state dict
plus the module it belongs to (`load_feature_extractor`). The numbers are only comparable to published FID /
KID / IS / CLIPScore / FVD values when that network is the standard one (pool3 of the FID Inception v3, CLIP
ViT-B/32, I3D) fed the standard preprocessing; with any other network they serve relative comparisons.

- FID / FVD: Frechet distance between Gaussians fitted to two feature sets (float64, unbiased covariance),
  trace(sqrt(S1 S2)) from the eigenvalues of S1 S2, as torchmetrics computes it.
- KID: unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, mean and std over random subsets.
- Inception Score: exp(E_x KL(p(y|x) || p(y))) from classifier logits, mean and std over splits.
- Sliced Wasserstein distance: Wasserstein-p between 1-D projections on random unit directions, averaged.
- LPIPS: unit-normalise each layer's features over channels, weighted squared difference, spatial mean,
  summed over layers. CLIPScore: w * max(cos(image, text), 0).
FID/KID/IS are proven equal to torchmetrics given the same features in tests/metrics/test_metrics_image.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gensys.metrics.inputs import MetricInputError


def _features(x: Tensor, name: str, min_rows: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2:
        raise MetricInputError(f"{name}: expected features of shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise MetricInputError(f"{name}: need at least {min_rows} samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise MetricInputError(f"{name}: features contain NaN or inf")
    return x.double()


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = _features(features, "features", min_rows=2)
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)); sqrt via eigenvalues of S1 S2 (real part)."""
    mean_term = (mu1 - mu2).square().sum()
    # S1 S2 is not symmetric but similar to a PSD matrix: its eigenvalues are real and >= 0 up to round-off
    sqrt_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * sqrt_trace)


def fid(real_features: Tensor, fake_features: Tensor) -> float:
    """Frechet Inception Distance between two feature sets (N1, D) and (N2, D)."""
    r, f = _features(real_features, "real_features", 2), _features(fake_features, "fake_features", 2)
    if r.shape[1] != f.shape[1]:
        raise MetricInputError(f"feature sizes differ: {r.shape[1]} vs {f.shape[1]}")
    return frechet_distance(*feature_stats(r), *feature_stats(f))


def fvd(real_video_features: Tensor, fake_video_features: Tensor) -> float:
    """Frechet Video Distance: the FID formula on per-video features (I3D logits/pool in the paper)."""
    return fid(real_video_features, fake_video_features)


def _poly_mmd2(x: Tensor, y: Tensor, degree: int, gamma: float | None, coef: float) -> Tensor:
    """Unbiased MMD^2 estimate with the polynomial kernel k(a, b) = (gamma a.b + coef)^degree."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * g + coef) ** degree  # (m, m)
    k_yy = (y @ y.T * g + coef) ** degree  # (m, m)
    k_xy = (x @ y.T * g + coef) ** degree  # (m, m)
    m = x.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def kid(
    real_features: Tensor,
    fake_features: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, population std) of MMD^2 over `subsets` random subsets.

    `subset_size` larger than either set is an error, as in torchmetrics; with subset_size equal to both set
    sizes every subset is the whole set (order does not matter), so one subset gives the exact estimate.
    """
    r, f = _features(real_features, "real_features", 2), _features(fake_features, "fake_features", 2)
    if subset_size < 2 or subset_size > min(r.shape[0], f.shape[0]):
        raise MetricInputError(
            f"subset_size must be in [2, min(n_real, n_fake)] = [2, {min(r.shape[0], f.shape[0])}], "
            f"got {subset_size}"
        )
    vals = []
    for _ in range(subsets):
        ir = torch.randperm(r.shape[0], generator=generator)[:subset_size]
        i_f = torch.randperm(f.shape[0], generator=generator)[:subset_size]
        vals.append(_poly_mmd2(r[ir], f[i_f], degree, gamma, coef))
    v = torch.stack(vals)
    return float(v.mean()), float(v.std(unbiased=False))


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score from classifier logits (N, C): (mean, std) over `splits` consecutive chunks.

    Shuffle first if the order of samples is not random. The std over one split is reported as 0.
    """
    x = _features(logits, "logits", min_rows=splits)
    scores = []
    for chunk in x.chunk(splits, dim=0):
        p = chunk.softmax(dim=1)  # (n, C) p(y|x)
        log_p = chunk.log_softmax(dim=1)
        p_y = p.mean(dim=0, keepdim=True)  # (1, C) marginal p(y)
        scores.append((p * (log_p - p_y.log())).sum(dim=1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std()) if len(scores) > 1 else 0.0


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, n_projections: int = 128, p: int = 2, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-p distance between point clouds (N, D) and (M, D), over random unit directions.

    Sets of different sizes are compared through their quantile functions at the midpoints of max(N, M) bins.
    """
    a, b = _features(x, "x"), _features(y, "y")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    dirs = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (D, P) unit directions
    pa, _ = (a @ dirs).sort(dim=0)  # (N, P)
    pb, _ = (b @ dirs).sort(dim=0)  # (M, P)
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = _quantiles(pa, q), _quantiles(pb, q)
    return float(((pa - pb).abs() ** p).mean() ** (1.0 / p))


def _quantiles(sorted_proj: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile function (a step function) of each column at levels q."""
    n = sorted_proj.shape[0]
    idx = torch.clamp((q * n).floor().long(), max=n - 1)
    return sorted_proj[idx]


def lpips_distance(
    feats_a: Sequence[Tensor], feats_b: Sequence[Tensor], weights: Sequence[Tensor] | None = None
) -> Tensor:
    """LPIPS from per-layer activations [(B, C_l, H_l, W_l)]: one distance per image pair, shape (B,).

    `weights[l]` (C_l,) are the learned non-negative channel weights of the LPIPS "lin" layers; without
    them every channel weighs 1 (LPIPS's uncalibrated baseline).
    """
    if len(feats_a) != len(feats_b) or not feats_a:
        raise MetricInputError("feats_a and feats_b must be non-empty lists with one tensor per layer")
    total = 0.0
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        if fa.shape != fb.shape or fa.dim() != 4:
            raise MetricInputError(
                f"layer {i}: shapes {tuple(fa.shape)} / {tuple(fb.shape)}, need equal (B,C,H,W)"
            )
        na = fa / (fa.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
        nb = fb / (fb.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
        d = (na - nb).square()  # (B, C, H, W)
        if weights is not None:
            d = d * weights[i].view(1, -1, 1, 1)
        total = total + d.sum(dim=1).mean(dim=(1, 2))  # (B,)
    return total


def clip_score(image_embeds: Tensor, text_embeds: Tensor, w: float = 100.0) -> float:
    """Mean of w * max(cos(image_i, text_i), 0) over pairs (N, D); w = 100 as torchmetrics (paper: 2.5)."""
    a, b = _features(image_embeds, "image_embeds"), _features(text_embeds, "text_embeds")
    if a.shape != b.shape:
        raise MetricInputError(
            f"image and text embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    cos = nn.functional.cosine_similarity(a, b, dim=1)
    return float((w * cos.clamp(min=0)).mean())


def load_feature_extractor(path: str | os.PathLike, module: nn.Module | None = None) -> nn.Module:
    """A feature network from a TorchScript file, or from a safetensors state dict loaded into `module`.

    Never unpickles: TorchScript archives hold code and tensors, safetensors only tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MetricInputError(f"feature extractor file not found: {path}")
    if path.endswith(".safetensors"):
        if module is None:
            raise MetricInputError("a safetensors file holds only weights: pass the module to load them into")
        from safetensors.torch import load_file

        module.load_state_dict(load_file(path))
        net = module
    else:
        try:
            net = torch.jit.load(path, map_location="cpu")
        except RuntimeError as e:
            raise MetricInputError(f"{path} is not a TorchScript file ({str(e).splitlines()[0]})") from None
    return net.eval()


@torch.no_grad()
def extract_features(net: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 64) -> Tensor:
    """Run `net` over images (N, ...) in batches; returns features (N, D) in float64."""
    if images.shape[0] == 0:
        raise MetricInputError("no images")
    out = [net(images[i : i + batch_size]).reshape(min(batch_size, images.shape[0] - i), -1)
           for i in range(0, images.shape[0], batch_size)]  # fmt: skip
    return torch.cat(out).double()
