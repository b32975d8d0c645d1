"""ResNet-20 in ONNX Runtime (CPU): the exact and fast APoT variants against the float32 export of the same
network (the same weights, no activation quantization) in the same runtime and run, at 2/3/4/5 bits
(2/3/4: the released checkpoints, 5: this project's, checkpoints/resnet20_5bit_apot.pth.tar).

- speed: images per second at batch 1 and 100 (ONNX Runtime sessions with torch's thread count, default
  graph optimizations; benchmarks/_common.interleaved: warmed up, interleaved rounds, median, min, max), and
  end to end (``--end-to-end-bits``, default 4), ``python -m apot_utils validate --checkpoint model.onnx`` on
  10,000 images in a fresh process;
- file size of each .onnx;
- predictions: the exact variant against the integer path (``integer_arithmetic``) and the fast one against
  the fake-quantized model, on the 10,000 JPEG-copy test images and the 1,000 exact ones;
- where the time goes: ONNX Runtime's profiler, per operator type, batch 100, 4 bits.

Run: python benchmarks/bench_onnx.py [--repeat 5] [--bits 2 3 4 5]   (needs APOT_DATA_DIR; OMP_NUM_THREADS sets the threads)
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import command, interleaved, table, write

from apot_utils.commands.export import export_checkpoint
from apot_utils.deploy.runtime import OnnxRuntimeModel
from apot_utils.fakequant.loading import load_model
from apot_utils.files import data
from apot_utils.files.paths import SHIPPED_DIR
from apot_utils.integer.convert import to_integer
from apot_utils.integer.layers import integer_arithmetic

VARIANTS = ("float", "exact", "fast")


def checkpoint_of(bit: int):
    return SHIPPED_DIR / "resnet20_5bit_apot.pth.tar" if bit == 5 else "release"


def predictions(fn, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(b).argmax(1) for b in images.split(batch)])


def profile(path: Path, x: np.ndarray, runs: int = 3) -> dict[str, float]:
    """ONNX Runtime's profiler: milliseconds per run by operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "apot_onnx_profile")
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"images": x})
    for _ in range(runs):
        session.run(None, {"images": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / (runs + 1)
    return dict(per_op.most_common())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--end-to-end-repeat", type=int, default=2)
    parser.add_argument("--end-to-end-bits", type=int, nargs="*", default=[4], help="bitwidths timed end to end")
    args = parser.parse_args()
    jpeg = data.load_cifar10(data.reference_file("cifar10/test_jpeg.npz"))
    exact_file = data.reference_file("cifar10/test_first1000_lossless.npz")
    exact = data.load_npz(exact_file)
    images = {"jpeg10000": data.normalize(jpeg.x), "exact1000": data.normalize(exact.x)}
    rows, agreement, profiles = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for bit in args.bits:
            paths = {v: export_checkpoint("cifar10", "resnet20", bit, checkpoint_of(bit), Path(tmp) / f"r{bit}_{v}.onnx",
                                          "onnx", v, log=lambda line: None) for v in VARIANTS}
            models = {v: OnnxRuntimeModel(p) for v, p in paths.items()}
            batch1, batch100 = images["exact1000"][:1].numpy(), images["exact1000"][:100].numpy()
            cases = {}
            for v, m in models.items():
                cases[f"{v} b1"] = lambda m=m: m.session.run(None, {"images": batch1})
                cases[f"{v} b100"] = lambda m=m: m.session.run(None, {"images": batch100})
            timings = interleaved(cases, args.repeat)
            end_to_end = {}
            if bit in args.end_to_end_bits:
                end_to_end = interleaved({v: command(["-m", "apot_utils", "validate", "--checkpoint", str(p), "--data",
                                                      str(data.reference_file("cifar10/test_jpeg.npz"))])
                                          for v, p in paths.items()}, args.end_to_end_repeat)
            for v in VARIANTS:
                row = {"bit": bit, "variant": v, "file_bytes": paths[v].stat().st_size}
                for b, n in (("b1", 1), ("b100", 100)):
                    t = timings[f"{v} {b}"]
                    row[f"img_s_{b}"] = n / t["median"]
                    row[f"img_s_{b}_min"], row[f"img_s_{b}_max"] = n / t["max"], n / t["min"]
                    row[f"speedup_{b}"] = timings[f"float {b}"]["median"] / t["median"]
                if end_to_end:
                    row["validate_10000_s"] = end_to_end[v]["median"]
                    row["validate_10000_first_s"] = end_to_end[v]["first"]
                    row["validate_ratio"] = end_to_end[v]["median"] / end_to_end["float"]["median"]
                rows.append(row)
            model = load_model("cifar10", "resnet20", bit, checkpoint_of(bit), log=lambda line: None).eval()
            integer = to_integer(model)
            for name, x in images.items():
                with integer_arithmetic(integer):
                    by_integer = predictions(integer, x)
                fake = predictions(model, x)
                onnx_exact, onnx_fast = predictions(models["exact"], x), predictions(models["fast"], x)
                labels = (jpeg if name == "jpeg10000" else exact).y
                agreement.append({"bit": bit, "images": name, "exact_equal_integer": int((onnx_exact == by_integer).sum()),
                                  "fast_differ_fake": int((onnx_fast != fake).sum()), "n": len(x),
                                  "top1_fake": float((fake == labels).float().mean() * 100),
                                  "top1_fast": float((onnx_fast == labels).float().mean() * 100),
                                  "top1_exact": float((onnx_exact == labels).float().mean() * 100)})
            if bit == 4:
                profiles = {v: profile(paths[v], batch100) for v in VARIANTS}
            table([r for r in rows if r["bit"] == bit])
            table([a for a in agreement if a["bit"] == bit])
    write("bench_onnx_cpu", rows, agreement=agreement, profile_4bit_batch100_ms=profiles,
          threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
