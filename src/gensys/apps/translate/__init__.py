"""gensys.apps.translate: the Translate system (seed notes, section 3).

Joint byte-level BPE per language pair, an encoder-decoder transformer (`gensys.models.seq2seq`), masked-LM
pretraining on monolingual text of both languages, supervised fine-tuning with label smoothing, beam search
from `gensys.generate`, and BLEU / chrF / ROUGE-L / METEOR from `gensys.metrics`.

- recipes (`recipe.py`): `prepare_main`, `train_main`, `eval_main`, `predict_main` (argv -> exit code)
- predictor (`predictor.py`): `load_predictor(dir).translate(texts, beam=5) -> [{"translation", "score"}]`
- config (`config.py`): `Config`; shipped files in configs/translate/{tiny,demo,quality}.yaml

`python -m gensys.apps.translate <prepare|train|eval|predict> ...` runs a recipe without the `gensys` CLI.
"""
