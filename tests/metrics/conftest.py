"""Real text for the metrics tests: Multi30k English (data/translate) and Flickr8k captions (shared/)."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict

import pytest
from metrics_testdata import CAPTIONS_TSV, DEBIAN_WORDNET, read_gz


@pytest.fixture(scope="session")
def multi30k() -> dict[str, list[str]]:
    return {"test": read_gz("test_2016_flickr.en.gz"), "val": read_gz("val.en.gz")}


@pytest.fixture(scope="session")
def caption_sets() -> tuple[list[str], list[list[str]]]:
    """(hypotheses, references) of 1500 images: caption 0 scored against captions 1-4 (leave-one-out).

    Flickr8k captions from shared/ when present; otherwise groups of 5 Multi30k training sentences (image
    descriptions too, though not of one image), so the test runs on any checkout.
    """
    groups: list[list[str]]
    if CAPTIONS_TSV.is_file():
        caps: dict[str, list[str]] = defaultdict(list)
        with open(CAPTIONS_TSV, encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                caps[row["image"]].append(row["caption"])
        groups = [caps[k] for k in sorted(caps) if len(caps[k]) >= 2][:1500]
    else:
        train = read_gz("train.en.gz")[:7500]
        groups = [train[i : i + 5] for i in range(0, len(train), 5)]
    return [g[0] for g in groups], [g[1:] for g in groups]


@pytest.fixture(scope="session")
def nltk_wordnet(tmp_path_factory: pytest.TempPathFactory):
    """nltk's WordNet reader over Debian's wordnet-base files (copied: nltk refuses links out of its root)."""
    if not (DEBIAN_WORDNET / "index.noun").is_file():
        pytest.skip("Debian wordnet-base is not installed (apt-get install wordnet-base)")
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = tmp_path_factory.mktemp("wordnet")
    for f in DEBIAN_WORDNET.iterdir():
        if f.is_file():
            shutil.copyfile(f, root / f.name)
    # Debian ships no `lexnames` (nltk requires it): the 45 lexicographer file names of WordNet 3.0, in order
    lexnames = str.split(
        "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
        "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
        "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
        "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
        "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
        "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
        "adj.ppl"
    )
    (root / "lexnames").write_text("".join(f"{i:02d}\t{n}\t0\n" for i, n in enumerate(lexnames)))
    nltk.data.path.append(str(root))

    class DebianWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # no multilingual (OMW) mapping: it would look for nltk_data
            return None

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DebianWordNet(str(root), None)
