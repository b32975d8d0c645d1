"""One quantization-aware training step of ResNet-20 (batch 128, forward, backward and SGD step) on the
CPU: full precision against 2/3/4/5-bit APoT and the reference formulation (4 bits with the argmin
projection over the N×L table), each as a ratio to full precision in the same run
(benchmarks/_common.interleaved: warmed up, interleaved rounds, median, min and max), and the bytes
the forward keeps for the backward (autograd's saved tensors, through saved_tensors_hooks).

Run: python benchmarks/bench_train.py [--repeat 5]
"""
from __future__ import annotations

import argparse

import torch
from _common import interleaved, write
from apot_utils.core.reference import reference_formulation

from apot_utils.fakequant.evaluate import reuse_freed_memory
from apot_utils.fakequant.spec import ModelSpec


def step_fn(model, images, labels, reference=False):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)   # tiny lr: the weights barely move

    def step():
        with reference_formulation() if reference else torch.enable_grad():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return step


def saved_bytes(model, images, labels) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one step (a tensor that two
    operations keep, such as a ReLU's output that the next quantizer keeps too, counted once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return sum(storages.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    reuse_freed_memory()          # as the command line does: the same allocator settings for every case
    torch.manual_seed(0)
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    models = {b: ModelSpec("cifar10", "resnet20", b).build().train() for b in (32, 2, 3, 4, 5)}
    cases = {("full precision" if b == 32 else f"{b}-bit"): step_fn(m, images, labels) for b, m in models.items()}
    cases["4-bit reference formulation"] = step_fn(ModelSpec("cifar10", "resnet20", 4).build().train(), images, labels, True)
    found = interleaved(cases, args.repeat)
    base = found["full precision"]["median"]
    memory = {("full precision" if b == 32 else f"{b}-bit"): saved_bytes(m, images, labels) for b, m in models.items()}
    rows = []
    for name, t in found.items():
        rows.append({"case": name, "median_s": t["median"], "min_s": t["min"], "max_s": t["max"], "first_s": t["first"],
                     "x_full_precision": t["median"] / base, "saved_MB": memory.get(name, float("nan")) / 1e6})
        r = rows[-1]
        print(f"{name:>28}  median {r['median_s']:.3f} s  [{r['min_s']:.3f}, {r['max_s']:.3f}]  x FP {r['x_full_precision']:.2f}"
              f"  saved for backward {r['saved_MB']:.0f} MB")
    write("bench_train_cpu", rows, batch=args.batch, repeat=args.repeat, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
