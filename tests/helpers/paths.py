"""Where things are: the repository root, its conf/ directory, and the real data (NUCSEG_DATA_DIR, else
../shared/data beside the clone)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/paths.py -> the repository root
CONF_DIR = PROJECT_ROOT / "conf"
DATA_DIR = Path(os.environ.get("NUCSEG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
DSB_ROOT = DATA_DIR / "dsb2018" / "stage1_train"
ISBI_ROOT = DATA_DIR / "isbi2012"
