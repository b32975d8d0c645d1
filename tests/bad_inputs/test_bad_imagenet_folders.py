"""ImageNet folders that cannot be used: the folder above train/ and val/, a class count that is not the
model's, unreadable images (empty, truncated) read by worker processes; and --limit on ImageNet."""
import pytest
import torch

from apot_utils.files import imagenet
from apot_utils.fakequant.spec import ModelSpec


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A random full-precision ImageNet ResNet-18 checkpoint (what is tested here is the data)."""
    path = tmp_path_factory.mktemp("model") / "resnet18.pth.tar"
    torch.save({"state_dict": ModelSpec("imagenet", "resnet18", 32).build().state_dict(),
                "meta": {"dataset": "imagenet", "arch": "resnet18", "bit": 32}}, path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """1,000 class folders of one small noise JPEG each."""
    return imagenet.make_synthetic_imagefolder(tmp_path_factory.mktemp("imagenet") / "val", classes=1000, per_class=1, size=32)


def validate(cli, checkpoint, folder, *extra):
    return cli("validate", "--dataset", "imagenet", "--arch", "resnet18", "--bit", "32", "--checkpoint", checkpoint,
               "--data", folder, "--device", "cpu", *extra)


def test_limit_validates_the_first_images_only(cli, resnet18, folder):
    from apot_utils.commands.validate import run_validation

    result = run_validation("imagenet", "resnet18", 32, resnet18, folder, "cpu", limit=3, workers=0, log=lambda line: None)
    assert result.targets.tolist() == [0, 1, 2]            # the first three images, one per class folder
    run = validate(cli, resnet18, folder, "--limit", "3", "--workers", "0")
    assert run.status == 0, run.err
    assert "Test: [0/1]" in run.out and " * Acc@1 " in run.out


@pytest.mark.parametrize("classes", [2, 999, 1001])
def test_a_class_list_that_is_not_the_models_is_refused(classes, cli, resnet18, tmp_path):
    root = imagenet.make_synthetic_imagefolder(tmp_path / "images", classes=classes, size=8)
    run = validate(cli, resnet18, root, "--limit", "2")
    run.assert_clean_error(f"has {classes} class folders (class_000, class_001", "the model has 1000 classes")
    assert "IndexError" not in run.err


def test_the_folder_above_train_and_val_is_refused(cli, resnet18, tmp_path):
    for split in ("train", "val"):
        imagenet.make_synthetic_imagefolder(tmp_path / "imagenet" / split, classes=2, size=8)
    validate(cli, resnet18, tmp_path / "imagenet").assert_clean_error("has 2 class folders (train, val)")


@pytest.mark.parametrize("damage, reason", [(lambda raw: b"", "not an image, or empty"),
                                            (lambda raw: raw[: len(raw) // 2], "truncated")])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_unreadable_image_is_named_without_a_worker_traceback(damage, reason, workers, cli, resnet18, tmp_path):
    root = imagenet.make_synthetic_imagefolder(tmp_path / "val", size=64)
    bad = root / "class_000" / "img_0.jpg"
    bad.write_bytes(damage(bad.read_bytes()))
    run = validate(cli, resnet18, root, "--limit", "2", "--workers", workers)
    run.assert_clean_error(f"{bad} is not a readable image", reason)
    assert "Original Traceback" not in run.err and "DataLoader worker" not in run.err
