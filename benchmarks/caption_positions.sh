#!/bin/bash
# Positional encodings of the image memory, 1D vs 2D (issue 12): seven captioners on synthetic shapes
# ("a red circle above a blue square": the words depend on where things are), 600 steps each from
# configs/caption/tiny.yaml, then one comparison table (runs/caption/shapes-eval/table.md).
#   bash benchmarks/caption_positions.sh        # about 45 minutes on one core of this CPU
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
DATA=runs/caption/shapes
[ -f $DATA/captions.tsv ] || $PY -c "import sys; sys.path.insert(0, 'tests/apps/caption'); \
from pathlib import Path; from caption_synth import write_dataset; write_dataset(Path('$DATA'), 1024, 128)"
C="--config configs/caption/tiny.yaml --data-dir $DATA data.cache_dir=runs/caption/shapes-cache train.max_steps=600"
V="model.encoder=vit model.patch_size=4 model.enc_d_model=64 model.enc_layers=2 model.enc_heads=4 model.enc_d_ff=128"
for pos in sinusoidal2d learned2d none; do
  name=$([ $pos = sinusoidal2d ] && echo sin2d || echo $pos)
  [ -d runs/caption/shapes_cnn_$name/last ] || $PY -m gensys caption train $C train.out_dir=runs/caption/shapes_cnn_$name model.enc_pos=$pos
done
for pos in learned sinusoidal2d learned2d none; do
  [ -d runs/caption/shapes_vit_$pos/last ] || $PY -m gensys caption train $C train.out_dir=runs/caption/shapes_vit_$pos $V model.enc_pos=$pos
done
$PY -m gensys caption eval --config configs/caption/tiny.yaml --data-dir $DATA data.cache_dir=runs/caption/shapes-cache \
  --out-dir runs/caption/shapes-eval --ckpt runs/caption/shapes_cnn_{sin2d,learned2d,none}/last \
  runs/caption/shapes_vit_{learned,sinusoidal2d,learned2d,none}/last
