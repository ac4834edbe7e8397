#!/usr/bin/env bash
# Build the RecBole virtualenv that benchmarks/peers/sasrec_recbole.py runs in, outside the
# repo (default ~/.cache/shelfwise/recbole-venv; override with RECBOLE_VENV). Shelfwise's own
# venv never gets RecBole or torch from here.
#
#   bash benchmarks/peers/setup_recbole_venv.sh
#
# torch is pinned to 2.13.0, the CPU wheel this machine keeps on disk (a bare "torch" would
# pull a multi-GB CUDA build). RecBole 1.2.1 goes in with --no-deps: its declared deps include
# ray<=2.6.3 (only for recbole.quick_start's hyper-parameter tuning, which the peer never
# imports) and plotly (hyper-tuning plots); everything it imports on the path the peer uses is
# pinned below. numpy stays below 2 because RecBole 1.2.1 uses np.float / np.float_ aliases.
set -euo pipefail
VENV="${RECBOLE_VENV:-$HOME/.cache/shelfwise/recbole-venv}"
WHEEL="${RECBOLE_WHEEL:-$HOME/.cache/shelfwise/recbole-1.2.1/recbole-1.2.1-py3-none-any.whl}"
PY="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  torch==2.13.0 \
  numpy==1.26.4 scipy==1.13.1 pandas==2.2.3 scikit-learn==1.5.2 \
  tqdm==4.67.1 colorlog==4.7.2 colorama==0.4.4 pyyaml==6.0.2 \
  tensorboard==2.18.0 texttable==1.7.0 tabulate==0.9.0 psutil==6.1.1 thop==0.1.1.post2209072238
if [ -f "$WHEEL" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL"
else
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps recbole==1.2.1
fi
"$VENV/bin/python" -c "import torch, recbole, numpy; print('recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
