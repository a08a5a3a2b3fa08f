"""Fine-tune (or evaluate) the pruned network in this folder, made by thinjax's prune
command (python -m thinjax.convert): the settings are this folder's finetune.json,
read by thinjax.conversion.finetune_config; summary.json has the before/after table.

Command:  python -m thinjax.main --config=THIS_DIR/config.py --workdir=DIR
          (evaluate only: add --config.mode=evaluate)
Expected: summary.json's "after" (top-1 right after pruning, when measured).
"""

import os

from thinjax.conversion import finetune_config


def get_config():
    return finetune_config(os.path.dirname(os.path.abspath(__file__)))
