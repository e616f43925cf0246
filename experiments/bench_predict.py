"""Prediction speed and memory: `nucseg.predict` against the bare network forward over the same tiles.

    NUCSEG_DATA_DIR=../shared/data python experiments/bench_predict.py CKPT \
        [--size 4096] [--images 100] [--mem-size 8192] [--out experiments/results/bench_predict_cpu.json]

Three cases, measured side by side in one run (uncertainty off, the default sliding window: 512-px tiles,
overlap 0.25, one tile per forward pass):
1. one `--size`² mosaic of stage1_train image crops, saved as a TIFF;
2. a folder of the first `--images` stage1_train images (sorted by id: every size and imaging type);
3. the peak resident memory of predicting one `--mem-size`² mosaic, in a fresh process.
For cases 1 and 2, "forward" is the network alone (`predict_logits` of the checkpoint's module) over exactly
the tiles predict runs (the mean of a pass before and one after predict); "predict" is `nucseg.predict`
in-process (reading, normalisation, sliding window, watershed, measurement, writing every output and the
tables); ratio = forward / predict (the issue's goal: >= 0.9 on the big image). Predict's time is also broken
down by stage, so what bounds the ratio is named.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NUCSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
CELL = 256  # mosaic cells: centre crops of the stage1_train images at least this large
WRITE = "writing outputs + record (worker thread)"


def mosaic(size: int) -> np.ndarray:
    """(size, size, 3) uint8: a grid of CELL-px centre crops of stage1_train images (sorted ids, reused with
    flips when the grid needs more cells than there are images)."""
    from nucseg.data.io import read_raw, to_rgb

    images = []
    for d in sorted((DATA / "dsb2018" / "stage1_train").iterdir()):
        img = to_rgb(read_raw(d / "images" / f"{d.name}.png"))
        if img.shape[0] >= CELL and img.shape[1] >= CELL:
            y, x = (img.shape[0] - CELL) // 2, (img.shape[1] - CELL) // 2
            images.append(img[y:y + CELL, x:x + CELL])
    n = size // CELL
    out = np.zeros((size, size, 3), np.uint8)
    for i in range(n * n):
        crop = images[i % len(images)]
        if (i // len(images)) % 2:
            crop = crop[::-1, ::-1]
        out[(i // n) * CELL:(i // n + 1) * CELL, (i % n) * CELL:(i % n + 1) * CELL] = crop
    return out


class StageTimer:
    """Wall seconds spent inside wrapped functions, by stage name (outermost call only per stage)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        original = getattr(owner, attr)
        depth = [0]

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    self.seconds[stage] += time.perf_counter() - t0
                    self.calls[stage] += 1

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def predict_config(ckpt: Path, inp: Path, out: Path) -> Any:
    from nucseg.utils.entry_config import compose_config

    return compose_config("predict", [f"ckpt_path={ckpt}", f"input={inp}", f"output={out}", "uncertainty.method=none",
                                      "progress=false", "device=cpu"], out)


def forward_seconds(ckpt: Path, files: list[Path]) -> tuple[float, int]:
    """The network alone over the tiles predict runs on `files`: (seconds in predict_logits, tiles)."""
    from nucseg.inference.predictor import Predictor
    from nucseg.inference.sliding_window import sliding_window_inference

    p = Predictor.from_checkpoint(ckpt, uncertainty={"method": "none"})
    seconds, tiles = 0.0, 0

    def fn(x: torch.Tensor) -> torch.Tensor:
        nonlocal seconds, tiles
        t0 = time.perf_counter()
        y = p.module.predict_logits(x)
        seconds += time.perf_counter() - t0
        tiles += x.shape[0]
        return y

    for f in files:
        x = torch.from_numpy(p.prepare_checked(_read(f))[0].transpose(2, 0, 1).copy()).float().div_(255.0)[None]
        with torch.no_grad():
            sliding_window_inference(fn, x, tile=p.window.tile, overlap=p.window.overlap, blend=p.window.blend,
                                     pad_multiple=int(p.module.pad_multiple), output_device="cpu")
    return seconds, tiles


def _read(path: Path) -> np.ndarray:
    from nucseg.data.io import read_raw

    return read_raw(path)


def timed_predict(ckpt: Path, inp: Path, out: Path) -> dict[str, Any]:
    """`nucseg.predict` in-process on `inp`: wall seconds and the stages' seconds."""
    import nucseg.inference.predictor as predictor_mod
    import nucseg.inference.records as records
    import nucseg.instances.measure as measure
    import nucseg.instances.watershed as watershed
    from nucseg.models.module import SegmentationModule
    from nucseg.predict import run_predict

    cfg = predict_config(ckpt, inp, out)
    timer = StageTimer()
    timer.wrap(predictor_mod, "read_raw", "read")
    timer.wrap(predictor_mod.Predictor, "prepare_checked", "normalise")
    timer.wrap(SegmentationModule, "predict_logits", "network forward")
    timer.wrap(predictor_mod.Predictor, "probabilities", "sliding window (incl. forward)")
    timer.wrap(watershed, "probs_to_instances", "post-processing (watershed)")
    timer.wrap(measure, "measure_instances", "measurement (nuclei table)")
    timer.wrap(records, "write_image", WRITE)
    t0 = time.perf_counter()
    try:
        report = run_predict(cfg)
    finally:
        timer.restore()
    wall = time.perf_counter() - t0
    if report.errors:
        raise SystemExit(f"predict failed: {report.errors}")
    stages = dict(timer.seconds)
    stages["sliding window (incl. forward)"] -= stages["network forward"]
    stages = {("blending / tiling" if k.startswith("sliding") else k): round(v, 2) for k, v in stages.items()}
    # writes run on a worker thread, overlapping the next image (all but the last image of a folder)
    stages["other (tables, loading, ...)"] = round(wall - sum(v for k, v in stages.items() if k != WRITE), 2)
    return {"wall_s": round(wall, 2), "images": len(report.summary),
            "nuclei": sum(int(r["nucleus_count"]) for r in report.summary), "stages_s": stages}


def case(name: str, ckpt: Path, inp: Path, work: Path) -> dict[str, Any]:
    files = sorted(p for p in inp.iterdir() if p.is_file())
    # the bare forward before and after predict: its mean is the reference, the two show the machine's drift
    before, tiles = forward_seconds(ckpt, files)
    pred = timed_predict(ckpt, inp, work / f"out_{name}")
    after, _ = forward_seconds(ckpt, files)
    fwd = (before + after) / 2
    row = {"case": name, "images": len(files), "tiles": tiles, "forward_s": round(fwd, 2),
           "forward_before_after_s": [round(before, 2), round(after, 2)], **pred,
           "ratio_forward_over_predict": round(fwd / pred["wall_s"], 3),
           # the bare forward drifts by ~10 % between passes on a shared machine; predict's own time does not
           # depend on it: forward / (forward + what predict adds to its network time)
           "overhead_s": round(pred["wall_s"] - pred["stages_s"]["network forward"], 2),
           "ratio_forward_over_forward_plus_overhead": round(
               fwd / (fwd + pred["wall_s"] - pred["stages_s"]["network forward"]), 3),
           "network_share_inside_predict": round(pred["stages_s"]["network forward"] / pred["wall_s"], 3)}
    print(json.dumps(row, indent=1), flush=True)
    return row


def peak_memory(ckpt: Path, size: int, work: Path) -> dict[str, Any]:
    """Peak resident memory (VmHWM) of a fresh process predicting one size² mosaic (uncertainty off)."""
    import tifffile

    inp = work / f"mem{size}"
    inp.mkdir()
    tifffile.imwrite(inp / f"mosaic{size}.tif", mosaic(size))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, str(ckpt), "--child", str(inp), str(work / f"out_mem{size}")],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"memory case failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"case": f"peak memory {size}x{size}", "wall_s": round(time.perf_counter() - t0, 1), **child}
    print(json.dumps(row), flush=True)
    return row


def child(ckpt: Path, inp: Path, out: Path) -> None:
    from nucseg.predict import run_predict

    cfg = predict_config(ckpt, inp, out)
    before = vm_hwm_bytes()
    report = run_predict(cfg)
    # VmHWM, not ru_maxrss: the latter keeps the parent's resident size across fork + exec
    print(json.dumps({"peak_rss_gb": round(vm_hwm_bytes() / 1e9, 2), "peak_before_predict_gb": round(before / 1e9, 2),
                      "nuclei": sum(int(r["nucleus_count"]) for r in report.summary)}))


def vm_hwm_bytes() -> int:
    """This process's peak resident set size (Linux /proc/self/status VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--mem-size", type=int, default=8192, help="0 skips the memory case")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.ckpt, *args.child)
    import tifffile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # warm-up: the first forward pass of a process pays for allocations and kernel selection
        forward_seconds(args.ckpt, [])
        if args.size:
            big = work / "big"
            big.mkdir()
            tifffile.imwrite(big / f"mosaic{args.size}.tif", mosaic(args.size))
            rows.append(case(f"one {args.size}x{args.size} image", args.ckpt, big, work))
        if args.images:
            folder = work / "folder"
            folder.mkdir()
            ids = sorted((DATA / "dsb2018" / "stage1_train").iterdir())[: args.images]
            for d in ids:
                (folder / f"{d.name}.png").write_bytes((d / "images" / f"{d.name}.png").read_bytes())
            rows.append(case(f"{len(ids)} stage1_train images", args.ckpt, folder, work))
        if args.mem_size:
            rows.append(peak_memory(args.ckpt, args.mem_size, work))
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "ckpt": str(args.ckpt),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
