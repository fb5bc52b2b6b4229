"""FID / KID / IS equal torchmetrics given the same fixed feature network; SWD, LPIPS, CLIPScore math."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gensys.metrics import (
    MetricInputError,
    clip_score,
    extract_features,
    fid,
    inception_score,
    kid,
    load_feature_extractor,
    lpips_distance,
    sliced_wasserstein,
)


class TinyFeatures(nn.Module):
    """A small fixed (seeded) conv net standing in for Inception: images (B, 3, H, W) -> features (B, 16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.float()))  # (B, 8, H', W')
        return self.head(h.mean(dim=(2, 3)))  # (B, 16)


class Float64(nn.Module):
    """Runs a network and returns float64 features, so torchmetrics' KID / IS (which keep the network's dtype)
    compute in double precision as ours do: MMD^2 is a small difference of large sums."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).double()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    real = torch.rand(96, 3, 24, 24, generator=g)
    fake = (torch.rand(80, 3, 24, 24, generator=g) * 0.8 + 0.1) ** 1.5  # a shifted distribution
    return real, fake


@pytest.mark.filterwarnings("ignore:std\\(\\)", "ignore:Metric")  # reference-library warnings
def test_fid_kid_is_equal_torchmetrics(images) -> None:
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    tm_is = pytest.importorskip("torchmetrics.image.inception")
    real, fake = images
    net = TinyFeatures().eval()
    fr, ff = extract_features(net, real, batch_size=32), extract_features(net, fake)

    ref_fid = tm_fid.FrechetInceptionDistance(feature=net, normalize=True)
    ref_fid.update(real, real=True)
    ref_fid.update(fake, real=False)
    # torchmetrics returns the result in the network's dtype (float32): compare at its precision
    assert fid(fr, ff) == pytest.approx(float(ref_fid.compute()), rel=1e-6)
    assert fid(fr, fr) == pytest.approx(0.0, abs=1e-8)

    ref_kid = tm_kid.KernelInceptionDistance(feature=Float64(net), subsets=1, subset_size=80, normalize=True)
    ref_kid.update(real[:80], real=True)
    ref_kid.update(fake, real=False)
    ours_kid = kid(fr[:80], ff, subsets=1, subset_size=80)[0]
    assert ours_kid == pytest.approx(float(ref_kid.compute()[0]), rel=1e-9)

    ref_is = tm_is.InceptionScore(feature=Float64(net), splits=1, normalize=False)
    ref_is.update(real)
    assert inception_score(fr, splits=1)[0] == pytest.approx(float(ref_is.compute()[0]), rel=1e-9)
    # several splits: torchmetrics shuffles with the global RNG; give ours the same permutation
    torch.manual_seed(7)
    ref_is3 = tm_is.InceptionScore(feature=Float64(net), splits=3, normalize=False)
    ref_is3.update(real)
    torch.manual_seed(7)
    mean3, std3 = ref_is3.compute()
    torch.manual_seed(7)
    perm = torch.randperm(fr.shape[0])
    ours3 = inception_score(fr[perm], splits=3)
    assert ours3 == pytest.approx((float(mean3), float(std3)), rel=1e-9)


def test_kid_subsets_are_reproducible_and_unbiased(images) -> None:
    net = TinyFeatures().eval()
    fr = extract_features(net, images[0])
    a = kid(fr, fr.flip(0), subsets=5, subset_size=40, generator=torch.Generator().manual_seed(0))
    b = kid(fr, fr.flip(0), subsets=5, subset_size=40, generator=torch.Generator().manual_seed(0))
    assert a == b
    assert abs(a[0]) < 0.05  # same distribution: the unbiased estimate scatters around 0
    with pytest.raises(MetricInputError, match="subset_size"):
        kid(fr, fr, subset_size=1000)


def test_sliced_wasserstein_in_1d_equals_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 1, generator=g), torch.randn(200, 1, generator=g) * 2 + 1
    # in 1-D every unit direction is +-1, so SW_1 is the Wasserstein-1 distance itself
    ours = sliced_wasserstein(x, y, n_projections=8, p=1, generator=g)
    assert ours == pytest.approx(stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel=1e-9)
    z = torch.randn(300, 5, generator=g)
    assert sliced_wasserstein(z, z, generator=g) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(z, z + 3.0, generator=g) > 1.0
    assert sliced_wasserstein(z[:100], z[:150], generator=g) >= 0.0  # different sizes via quantiles


def test_lpips_and_clip_score_math() -> None:
    g = torch.Generator().manual_seed(0)
    fa = [torch.randn(4, 6, 5, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g)]
    fb = [torch.randn(4, 6, 5, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g)]
    w = [torch.rand(6, generator=g), torch.rand(3, generator=g)]
    d = lpips_distance(fa, fb, w)
    # element by element: unit-normalise channels at each pixel, weighted squared difference, mean over pixels
    expect = torch.zeros(4)
    for a, b, wl in zip(fa, fb, w):
        for i in range(4):
            acc = 0.0
            for y in range(a.shape[2]):
                for x in range(a.shape[3]):
                    u, v = a[i, :, y, x], b[i, :, y, x]
                    acc += float((wl * (u / (u.norm() + 1e-10) - v / (v.norm() + 1e-10)) ** 2).sum())
            expect[i] += acc / (a.shape[2] * a.shape[3])
    torch.testing.assert_close(d, expect, rtol=1e-5, atol=1e-6)
    assert float(lpips_distance(fa, fa).abs().max()) == 0.0
    img, txt = torch.randn(10, 8, generator=g).double(), torch.randn(10, 8, generator=g).double()
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert clip_score(img, txt, w=2.5) == pytest.approx(float((2.5 * cos.clamp(min=0)).mean()), rel=1e-9)


def test_feature_extractor_loading(tmp_path, images) -> None:
    from safetensors.torch import save_file

    net = TinyFeatures().eval()
    x = images[0][:4]
    scripted = tmp_path / "feat.pt"
    torch.jit.save(torch.jit.script(net), str(scripted))
    torch.testing.assert_close(load_feature_extractor(scripted)(x), net(x))
    weights = tmp_path / "feat.safetensors"
    save_file(net.state_dict(), str(weights))
    other = TinyFeatures()
    torch.nn.init.zeros_(other.head.weight)
    torch.testing.assert_close(load_feature_extractor(weights, other)(x), net(x))
    with pytest.raises(MetricInputError, match="pass the module"):
        load_feature_extractor(weights)
    with pytest.raises(MetricInputError, match="not found"):
        load_feature_extractor(tmp_path / "missing.pt")
    with pytest.raises(MetricInputError, match="shape"):
        fid(torch.randn(5), torch.randn(5))
