"""ImageSource (folder / tar), RGB conversion and refusal of broken or oversized images."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gensys.data.readers import ImageSource, decode_image, open_image, read_caption_tsv, to_rgb
from gensys.errors import DataError

SHARED_TAR = Path("/work/shared/data/caption/flickr8k_images_128.tar")


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but holds (almost) no data: cheap to write, huge if decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    (d / "red.jpg").write_bytes(_jpeg((255, 0, 0)))
    (d / "sub" / "blue.JPG").write_bytes(_jpeg((0, 0, 255)))
    (d / "notes.txt").write_text("not an image, ignored")
    return d


def test_folder_source(folder: Path) -> None:
    src = ImageSource(folder)
    assert src.names() == ["blue.JPG", "red.jpg"] and len(src) == 2 and "red.jpg" in src
    im = src.open("red.jpg")
    assert im.mode == "RGB" and im.size == (32, 24)
    r, g, b = np.asarray(im).mean(axis=(0, 1))
    assert r > 240 and g < 15 and b < 15
    with pytest.raises(DataError, match="no image named 'green.jpg'"):
        src.open("green.jpg")


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_source_matches_folder(tmp_path, folder: Path, mode: str) -> None:
    tar_path = tmp_path / ("imgs.tar" if mode == "w" else "imgs.tar.gz")
    with tarfile.open(tar_path, mode) as tf:
        tf.add(folder / "red.jpg", arcname="images/red.jpg")
        tf.add(folder / "sub" / "blue.JPG", arcname="images/blue.JPG")
    src = ImageSource(tar_path)
    assert src.kind == ("tar" if mode == "w" else "tar.compressed")
    assert src.names() == ImageSource(folder).names()
    for name in src.names():
        assert src.read_bytes(name) == ImageSource(folder).read_bytes(name)
        assert np.array_equal(np.asarray(src.open(name)), np.asarray(ImageSource(folder).open(name)))
    clone = pickle.loads(pickle.dumps(src))  # what DataLoader workers receive
    assert clone.read_bytes("red.jpg") == src.read_bytes("red.jpg")


class _Images(torch.utils.data.Dataset):
    def __init__(self, src: ImageSource) -> None:
        self.src, self.names = src, src.names()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.src.open(self.names[i])).copy())


def test_tar_source_in_worker_processes(tmp_path) -> None:
    tar_path = tmp_path / "many.tar"
    with tarfile.open(tar_path, "w") as tf:
        for i in range(12):
            data = _jpeg((i * 20, 255 - i * 20, 7))
            info = tarfile.TarInfo(f"images/{i:02d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = ImageSource(tar_path)
    expected = [np.asarray(src.open(n)) for n in src.names()]
    loader = torch.utils.data.DataLoader(_Images(src), batch_size=3, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_duplicate_names_and_missing_source(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(_jpeg((1, 2, 3)))
    (tmp_path / "b" / "x.jpg").write_bytes(_jpeg((1, 2, 3)))
    with pytest.raises(DataError, match="two images named 'x.jpg'"):
        ImageSource(tmp_path)
    with pytest.raises(DataError, match="image source not found.*--data-dir"):
        ImageSource(tmp_path / "nowhere")
    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 10)
    with pytest.raises(DataError, match="not a readable tar archive"):
        ImageSource(tmp_path / "fake.tar")


def test_huge_declared_size_is_refused(tmp_path) -> None:
    # 20000 x 20000 = 400 MP: over Pillow's own bomb limit, reported as our DataError.
    with pytest.raises(DataError, match="too large|pixels"):
        decode_image(_png_header_only(20000, 20000), "bomb.png")
    # 8000 x 6000 = 48 MP: under Pillow's limit, over ours (40 MP by default).
    with pytest.raises(DataError, match="8000x6000 = 48000000 pixels, more than the limit of 40000000"):
        decode_image(_png_header_only(8000, 6000), "big.png")
    # Raising the limit lets the size check pass; the file then fails as broken (it has no pixel data).
    with pytest.raises(DataError, match="broken or truncated"):
        decode_image(_png_header_only(8000, 6000), "big.png", max_pixels=50_000_000)


def test_truncated_and_garbage_images(tmp_path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG")  # noise: the cut falls inside the pixel data
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: broken or truncated image"):
        open_image(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_bytes(b"hello, not a jpeg")
    with pytest.raises(DataError, match="not a readable image"):
        open_image(tmp_path / "text.jpg")
    with pytest.raises(DataError, match="image not found"):
        open_image(tmp_path / "absent.jpg")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_mode_conversions() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    rgb = decode_image(_encode(cmyk, "JPEG"), "cmyk.jpg")
    r, g, b = np.asarray(rgb).mean(axis=(0, 1))
    assert rgb.mode == "RGB" and r > 230 and g < 30 and b < 30

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (0, 128, 0, 255))
    out = np.asarray(decode_image(_encode(rgba, "PNG"), "rgba.png"))
    assert out[0, 0].tolist() == [0, 128, 0] and out[3, 3].tolist() == [255, 255, 255]  # on white

    la = Image.new("LA", (2, 2), (50, 255))
    assert np.asarray(decode_image(_encode(la, "PNG"), "la.png"))[0, 0].tolist() == [50, 50, 50]

    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.info["transparency"] = 0
    assert np.asarray(decode_image(_encode(pal, "PNG"), "p.png"))[0, 0].tolist() == [200, 10, 10]

    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))  # 16-bit grey
    assert np.asarray(to_rgb(deep))[0, 0].tolist() == [255, 255, 255]
    grey = Image.new("L", (2, 2), 77)
    assert np.asarray(to_rgb(grey))[1, 1].tolist() == [77, 77, 77]


@pytest.mark.skipif(not SHARED_TAR.exists(), reason="Flickr8k tar not on this machine")
def test_real_flickr_tar() -> None:
    src = ImageSource(SHARED_TAR)
    assert len(src) == 7091
    captions = read_caption_tsv(SHARED_TAR.parent / "captions.tsv")
    assert set(captions) == set(src.names())
    for name in src.names()[:: len(src) // 5]:
        im = src.open(name)
        assert im.mode == "RGB" and im.size == (128, 128)
