"""Full-precision CIFAR-10 MobileNetV2 (torchvision, CIFAR stem) for issue 28, trained on the 45k JPEG
training split, epoch chosen on the 5k held-out split (runs/qat2). Run in the background, 1 thread, as
runs/mbv2/train_fp.py (this file, as it ran, less an unused import): `python runs/mbv2/train_fp.py 20 1`, 20 epochs, about 4 minutes each.
build() is apot_utils.fakequant.models.cifar_mobilenet_v2() (SETTING is torchvision's default) in channels_last.
Its best.pth.tar (the last epoch, 78.96 % held out) became fp.pth.tar with the toolkit's metadata."""
import json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torchvision
from apot_utils.files import batching, data

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
WIDTH = 0.5
OUT = Path(__file__).parent
SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

def build():
    m = torchvision.models.mobilenet_v2(num_classes=10, inverted_residual_setting=SETTING, width_mult=WIDTH)
    m.features[0][0].stride = (1, 1)
    return m.to(memory_format=torch.channels_last)

def arrays(p):
    d = np.load(p)
    return data.ImageArrays(torch.from_numpy(d["x"]), torch.from_numpy(d["y"]))

if __name__ == "__main__":
    torch.manual_seed(2026)
    train, hold = data.load_npz("runs/qat2/train45k_jpeg.npz"), data.load_npz("runs/qat2/holdout5k_jpeg.npz")
    model = build()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    steps = EPOCHS * (len(train) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(2026)
    best, log = 0.0, open(OUT / "train_fp.log", "a")
    for epoch in range(EPOCHS):
        model.train(); t0 = time.time(); seen = 0
        order = batching.epoch_order(len(train), epoch, seed=2026)
        order = order[: len(order) - len(order) % 128]
        for i, (x, y) in enumerate(batching.batches(train, 128, order, train_augment=True, generator=gen)):
            loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            seen += len(y)
            if i % 50 == 0:
                print(f"epoch {epoch} step {i} loss {loss.item():.3f} {seen / (time.time() - t0):.1f} img/s", file=log, flush=True)
        model.eval(); correct = 0
        with torch.no_grad():
            for x, y in batching.batches(hold, 500):
                correct += (model(x).argmax(1) == y).sum().item()
        acc = 100 * correct / len(hold)
        print(json.dumps({"epoch": epoch, "holdout_top1": acc, "minutes": (time.time() - t0) / 60}), file=log, flush=True)
        state = {"state_dict": model.state_dict(), "epoch": epoch, "holdout_top1": acc, "setting": SETTING, "width_mult": WIDTH}
        torch.save(state, OUT / "last.tmp"); (OUT / "last.tmp").replace(OUT / "last.pth.tar")
        if acc > best:
            best = acc; torch.save(state, OUT / "best.tmp"); (OUT / "best.tmp").replace(OUT / "best.pth.tar")
