"""Scores every model in this folder and writes results.json (python checkpoints/mobilenet_v2/evaluate.py):
top-1 on the 5,000 held-out JPEG training images that chose the epochs (train45k/holdout5k split, see
checkpoints/README.md; pass their .npz as the first argument) and on the exact first 1,000 CIFAR-10 test images
($APOT_DATA_DIR), which chose nothing. tests/test_shipped_checkpoints.py recomputes the second column."""
import json
import sys
from pathlib import Path

from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.fakequant.loading import load_model
from apot_utils.files import data

HERE = Path(__file__).parent
MODELS = ["fp"] + [f"{b}bit_{s}_{stage}" for b in (4, 3) for s in ("apot", "uniform") for stage in ("ptq", "qat")]


def top1(name: str, images: data.ImageArrays) -> float:
    model = load_model("cifar10", "mobilenet_v2", None, HERE / f"{name}.pth.tar", log=lambda line: None)
    return validate_cifar10(model, images, "cpu", log=lambda line: None).top1


if __name__ == "__main__":
    holdout = data.load_npz(sys.argv[1])
    exact = data.load_npz(data.reference_file("cifar10/test_first1000_lossless.npz"))
    results = {name: {"holdout5k": top1(name, holdout), "exact1000": top1(name, exact)} for name in MODELS}
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
