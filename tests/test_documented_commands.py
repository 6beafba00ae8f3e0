"""Every command the documents show is run here, read from the document itself.

`tests/documented_commands.py` reads the steps of every command in README.md,
benchmarks/README.md and the experiments' docstrings. Each step is exercised one of four ways:

* run as written in a scenario below (`SCENARIOS`), in document order, with its paths moved
  into a temporary folder and small settings in place of long ones (fewer steps, smaller
  images; each replaces the documented value of the same flag or is added); inputs that cannot
  exist here are stand-ins of the same form, made by the scenario: a COCO-layout folder for
  /data/coco, the `.npz` form of a torchvision state dict (which `msrcnn.convert` reads without
  torch; the `.pth` needs torch) with seeded weights of the same tensors, a VIA json for the
  balloon data, a short mp4 for street.mp4;
* run by CI itself (`CI_STEPS`): .ci/run holds the README's test command verbatim;
* slow test files the CI's slow step runs (`SLOW_FILES`);
* the reference environment with torchvision (`REFERENCE_STEPS`), run only where it exists.

A step in a document that none of these names fails `test_every_documented_step_is_exercised`;
a scenario step no document shows any more fails it too.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests import seeded_weights
from tests.documented_commands import REPO, documented_steps, make_root, run_documented

SHAPES_SMALL = (
    "--config.data.shapes.num_train=16",
    "--config.data.shapes.num_validation=8",
    "--config.train.num_steps=2",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
)
# R-50 configs (coco.py, custom.py) at 64x64, one image, one step.
R50_SMALL = (
    "--config.data.image_hw=(64, 64)",
    "--config.data.image_hw_buckets=((64, 64),)",
    "--config.data.min_size=64",
    "--config.data.max_size=64",
    "--config.data.eval_batch_size=2",
    "--config.train.batch_size=1",
    "--config.train.num_steps=1",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1",
    "--config.train.warmup_steps=0",
    "--config.train.rpn_pre_nms_top_k=200",
    "--config.train.rpn_post_nms_top_k=64",
    "--config.train.roi_batch_size_per_image=32",
    "--config.train.max_instances=8",
    "--config.inference.rpn_pre_nms_top_k=200",
    "--config.inference.rpn_post_nms_top_k=32",
)
RUN_SMALL = ("--modes=train", "--sizes=96x96", "--batches=1", "--runs=1", "--rounds=1")
SIDE_BY_SIDE_SMALL = ("--size=64x64", "--runs=1", "--no_torchvision")
TRAIN_STEP_SMALL = ("--size=64x64", "--runs=1", "--objects=2")

# Each scenario: the steps it runs in order, as (documented text, settings that replace or
# add to the documented flags). Stand-in inputs are made by the scenario's `prepare` function.
SCENARIOS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "shapes": [
        (
            "python -m msrcnn.train --config=experiments/shapes.py --workdir=/tmp/msrcnn_shapes",
            SHAPES_SMALL,
        ),
        (
            "python -m msrcnn.evaluate --config=experiments/shapes.py --workdir=/tmp/msrcnn_shapes",
            SHAPES_SMALL,
        ),
        (
            "python -m msrcnn.predict --workdir=/tmp/msrcnn_shapes "
            "--input='photos/*.jpg,more_photos/' --output_dir=/tmp/predictions --splash "
            "--save_masks",
            (),
        ),
        (
            "python -m msrcnn.show data --config=experiments/shapes.py --output_dir=/tmp/show",
            (*SHAPES_SMALL, "--num_images=2"),
        ),
        (
            "python -m msrcnn.show pipeline --workdir=/tmp/msrcnn_shapes --input=image.png "
            "--output_dir=/tmp/show",
            (),
        ),
        (
            "python -m msrcnn.show weights --workdir=/tmp/msrcnn_shapes --output_dir=/tmp/show",
            (),
        ),
        # The tests' own config, at its documented settings (2 steps of a tiny model).
        ("python -m msrcnn.train --config=experiments/tiny.py --workdir=/tmp/msrcnn_tiny", ()),
    ],
    "coco": [
        ("python -m msrcnn.data.builders.tiny_coco /tmp/tiny_coco", ()),
        (
            "python -m msrcnn.train --config=experiments/coco.py:runlocal "
            "--config.data.coco.manual_dir=/tmp/tiny_coco --workdir=/tmp/coco_runlocal",
            (),
        ),
        (
            "python -m msrcnn.convert --from=torchvision --checkpoint=resnet50-0676ba61.pth "
            "--num_classes=80 --output=/data/r50_imagenet",
            (),
        ),
        (
            "python -m msrcnn.train --config=experiments/coco.py --workdir=/runs/ms_r50_1x "
            "--config.data.coco.manual_dir=/data/coco "
            "--config.train.init_checkpoint=/data/r50_imagenet",
            R50_SMALL,
        ),
    ],
    "torchvision_model": [
        (
            "python -m msrcnn.convert --from=torchvision "
            "--checkpoint=maskrcnn_resnet50_fpn_coco.pth --output=/tmp/maskrcnn_coco",
            (),
        ),
        (
            "python -m msrcnn.predict --checkpoint=/tmp/maskrcnn_coco --video=street.mp4 "
            "--output_dir=/tmp/predictions",
            (),
        ),
    ],
    "balloon": [
        (
            "python -m msrcnn.convert --from=torchvision --num_classes=1 "
            "--checkpoint=maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output=/data/mrcnn_r50_1class",
            (),
        ),
        (
            "python -m msrcnn.train --config=experiments/custom.py:via --workdir=/runs/balloon "
            "--config.data.custom.class_names='(\"balloon\",)' --config.model.num_classes=1 "
            "--config.data.custom.train.annotations=/data/balloon/train/via_region_data.json "
            "--config.data.custom.train.images=/data/balloon/train "
            "--config.data.custom.validation.annotations=/data/balloon/val/via_region_data.json "
            "--config.data.custom.validation.images=/data/balloon/val "
            "--config.train.init_checkpoint=/data/mrcnn_r50_1class",
            R50_SMALL,
        ),
        (
            "python -m msrcnn.train --config=experiments/custom.py:via "
            "--workdir=/runs/balloon_small "
            "--config.data.custom.class_names='(\"balloon\",)' --config.model.num_classes=1 "
            "--config.data.custom.train.annotations=/data/balloon/train/via_region_data.json "
            "--config.data.custom.train.images=/data/balloon/train "
            "--config.data.custom.validation.annotations=/data/balloon/val/via_region_data.json "
            "--config.data.custom.validation.images=/data/balloon/val "
            "--config.data.min_size=512 --config.data.max_size=768 "
            "--config.data.image_hw='(512, 768)' "
            "--config.data.image_hw_buckets='((512, 768), (768, 512))' "
            "--config.train.init_checkpoint=/data/mrcnn_r50_1class",
            R50_SMALL,
        ),
    ],
    # Needs the export extra (jax2onnx, onnxruntime, tensorflow): skipped where it is missing.
    "export": [
        ("python -m msrcnn.train --config=experiments/tiny.py --workdir=/tmp/msrcnn_tiny", ()),
        (
            "python -m msrcnn.export --workdir=/tmp/msrcnn_tiny --format=onnx "
            "--output=/tmp/msrcnn_tiny.onnx",
            (),
        ),
        (
            "python -m msrcnn.export --workdir=/tmp/msrcnn_tiny --format=stablehlo "
            "--output=/tmp/msrcnn_tiny.stablehlo",
            (),
        ),
        (
            "python -m msrcnn.export --workdir=/tmp/msrcnn_tiny --format=saved_model "
            "--output=/tmp/msrcnn_tiny_saved_model",
            (),
        ),
        (
            "python -m benchmarks.deploy --workdir=/tmp/msrcnn_tiny --onnx=/tmp/msrcnn_tiny.onnx "
            "--stablehlo=/tmp/msrcnn_tiny.stablehlo --saved_model=/tmp/msrcnn_tiny_saved_model "
            "--images=4 --runs=20",
            ("--images=1", "--runs=1"),
        ),
        ("python -m benchmarks.tflite_stages --workdir=/tmp/msrcnn_tiny --image_size=96x96", ()),
        (
            "python -m msrcnn.convert --from=torchvision "
            "--checkpoint=maskrcnn_resnet50_fpn_coco.pth --output=/tmp/maskrcnn_coco",
            (),
        ),
        (
            "python -m msrcnn.export --checkpoint=/tmp/maskrcnn_coco --format=onnx "
            "--output=/tmp/maskrcnn_800.onnx --image_size=800x800",
            (),
        ),
        (
            "python -m msrcnn.export --checkpoint=/tmp/maskrcnn_coco --format=stablehlo "
            "--output=/tmp/maskrcnn_800.stablehlo --image_size=800x800",
            (),
        ),
        (
            "python -m benchmarks.deploy --checkpoint=/tmp/maskrcnn_coco "
            "--onnx=/tmp/maskrcnn_800.onnx --stablehlo=/tmp/maskrcnn_800.stablehlo --runs=3",
            ("--images=1", "--runs=1"),
        ),
    ],
    "benchmarks": [
        ("python -m benchmarks.run", RUN_SMALL),
        ("/tmp/tv/bin/python -m benchmarks.run", RUN_SMALL),
        ("python -m benchmarks.run --rounds=3", RUN_SMALL),
        ("python -m benchmarks.run --modes=train --sizes=512x512 --rounds=3", RUN_SMALL),
        ("python -m benchmarks.run --modes=train --rounds=3", RUN_SMALL),
        ("python -m benchmarks.train_step --plain", TRAIN_STEP_SMALL),
        ("python -m benchmarks.train_step", TRAIN_STEP_SMALL),
        ("python -m benchmarks.train_step --plain --start_step=5", TRAIN_STEP_SMALL),
        (
            "python -m benchmarks.train_step --plain --set train.mask_slot_step=0",
            TRAIN_STEP_SMALL,
        ),
        ("python -m benchmarks.backward", SIDE_BY_SIDE_SMALL),
        ("python -m benchmarks.conv_gradients", SIDE_BY_SIDE_SMALL),
        ("python -m benchmarks.ops", ("--quick",)),
        ("/tmp/tv/bin/python -m benchmarks.ops", ("--quick",)),
        ("python -m benchmarks.input_pipeline", ("--images=16", "--threads=1")),
        ("python -m benchmarks.train_memory", ("--batch=1", "--hw=64,64")),
        (
            "python -m benchmarks.train_memory --config=experiments/coco.py --batch=1,2",
            ("--batch=1", "--hw=64,64"),
        ),
    ],
}

# Steps .ci/run runs on every submission (it holds the README's test command verbatim).
CI_STEPS = {
    "python3 -m venv .venv",
    ". .venv/bin/activate",
    'pip install -q -e ".[test]"',
    "ruff check .",
    "ruff format --check .",
    "pytest -n 2",
    "pytest -n 2 -m slow --dist loadfile",
    "bash .ci/run",
}
# `pip install -e .` (the main command's install) and the extras: the package metadata is
# checked here; CI installs the package with the test extra, which holds the video packages.
INSTALL_STEPS = {
    "pip install -e .",
    'pip install -e ".[video]"',
    'pip install -e ".[convert]"',
    'pip install -e ".[export]"',
}
SLOW_FILES = {
    "pytest -m slow tests/test_disk_full.py": "tests/test_disk_full.py",
    "pytest -m slow tests/test_multihost.py": "tests/test_multihost.py",
}
# The throwaway torchvision environment (a 4.8 GB download) that makes golden fixtures and runs
# the benchmarks beside torchvision: exercised by test_reference_environment where it exists.
REFERENCE_VENV = pathlib.Path("/tmp/tv")
REFERENCE_STEPS = {
    "python3 -m venv /tmp/tv",
    'PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /tmp/tv/bin/pip install "torch==2.13.0" '
    '"torchvision==0.28.0"',
    "/tmp/tv/bin/pip install -e .",
    "/tmp/tv/bin/python tests/testdata/make_golden_boxes.py",
}


def _scenario_steps() -> set[str]:
    return {text for steps in SCENARIOS.values() for text, _ in steps}


def test_every_documented_step_is_exercised():
    documented = {step.text: step.source for step in documented_steps()}
    covered = _scenario_steps() | CI_STEPS | INSTALL_STEPS | set(SLOW_FILES) | REFERENCE_STEPS
    missing = [f"{source}: {text}" for text, source in documented.items() if text not in covered]
    assert not missing, "documented commands no test runs:\n" + "\n".join(missing)
    stale = sorted(covered - set(documented))
    assert not stale, "exercised commands no document shows any more:\n" + "\n".join(stale)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.*?)\n```", readme, re.S)
    assert block, "README.md lost its test command block"
    assert block.group(1).strip() in ci.splitlines()
    assert "pytest -n 2 -m slow --dist loadfile" in ci.splitlines()


def test_install_steps_name_the_package_and_its_extras():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for step in INSTALL_STEPS:
        match = re.fullmatch(r'pip install -e (?:\.|"\.\[(\w+)\]")', step)
        assert match, step
        assert match.group(1) is None or match.group(1) in extras, step
    # The video extra is inside the test extra, so the video path is tested by CI.
    assert set(extras["video"]) <= set(extras["test"])


@pytest.mark.parametrize("step", sorted(SLOW_FILES))
def test_slow_files_run_in_the_ci_slow_step(step):
    text = (REPO / SLOW_FILES[step]).read_text()
    assert "pytestmark = pytest.mark.slow" in text, f"{SLOW_FILES[step]} is not in the slow step"


# ---- running the steps ---------------------------------------------------------------------


def _photo(path: pathlib.Path, seed: int, hw=(96, 128)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _prepare_shapes(root: pathlib.Path) -> None:
    work = root / "work"
    (work / "photos").mkdir()
    (work / "more_photos").mkdir()
    _photo(work / "photos" / "a.jpg", 0)
    _photo(work / "more_photos" / "b.png", 1)
    _photo(work / "image.png", 2, (128, 128))


def _prepare_coco(root: pathlib.Path) -> None:
    """A COCO 2017 folder for /data/coco (the generated one, with COCO's 80 categories) and a
    torchvision ImageNet ResNet-50 state dict (seeded weights) for resnet50-0676ba61.pth."""
    from msrcnn.data.builders import tiny_coco

    coco = root / "data" / "coco"
    tiny_coco.main([str(coco), "--num_train=4", "--num_val=2", "--size=64"])
    for part in ("train", "val"):
        path = coco / "annotations" / f"instances_{part}2017.json"
        data = json.loads(path.read_text())
        used = {c["id"] for c in data["categories"]}
        extra = [i for i in range(1, 91) if i not in used][: 80 - len(used)]
        data["categories"] += [{"id": i, "name": f"category {i}"} for i in extra]
        data["categories"].sort(key=lambda c: c["id"])
        path.write_text(json.dumps(data))
    state = seeded_weights.state_dict()
    resnet = {
        k.removeprefix("backbone.body."): v for k, v in state.items() if k.startswith("backbone.")
    }
    resnet = {k: v for k, v in resnet.items() if not k.startswith("backbone.fpn")}
    resnet["fc.weight"] = np.zeros((1000, 2048), np.float32)
    resnet["fc.bias"] = np.zeros((1000,), np.float32)
    np.savez(root / "work" / "resnet50-0676ba61.npz", **resnet)


def _prepare_torchvision_model(root: pathlib.Path) -> None:
    import imageio.v3 as iio

    np.savez(root / "work" / "maskrcnn_resnet50_fpn_coco.npz", **seeded_weights.state_dict())
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    iio.imwrite(root / "work" / "street.mp4", frames, fps=5, codec="libx264")


def _prepare_balloon(root: pathlib.Path) -> None:
    """The balloon data's layout: VIA 2 json per split, one unnamed class, polygons."""
    state = seeded_weights.state_dict()
    np.savez(root / "work" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.npz", **state)
    for part, count in (("train", 3), ("val", 2)):
        folder = root / "data" / "balloon" / part
        folder.mkdir(parents=True)
        entries = {}
        for i in range(count):
            name = f"{part}{i}.jpg"
            _photo(folder / name, 10 + i, (60, 80))
            size = (folder / name).stat().st_size
            entries[f"{name}{size}"] = {
                "filename": name,
                "size": size,
                "regions": [
                    {
                        "shape_attributes": {
                            "name": "polygon",
                            "all_points_x": [10 + i, 50, 30],
                            "all_points_y": [8, 12, 50],
                        },
                        "region_attributes": {},
                    }
                ],
                "file_attributes": {},
            }
        (folder / "via_region_data.json").write_text(json.dumps(entries))


def _prepare_export(root: pathlib.Path) -> None:
    """The torchvision COCO state dict (seeded weights) for maskrcnn_resnet50_fpn_coco.pth."""
    np.savez(root / "work" / "maskrcnn_resnet50_fpn_coco.npz", **seeded_weights.state_dict())


PREPARE = {
    "shapes": _prepare_shapes,
    "coco": _prepare_coco,
    "torchvision_model": _prepare_torchvision_model,
    "balloon": _prepare_balloon,
    "export": _prepare_export,
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"benchmarks"}))
def test_scenario(scenario, tmp_path):
    if scenario == "export":
        for module in ("jax2onnx", "onnxruntime", "tensorflow"):
            pytest.importorskip(module, reason='the export extra: pip install -e ".[export]"')
    root = make_root(tmp_path)
    PREPARE[scenario](root)
    for text, settings in SCENARIOS[scenario]:
        run_documented(text, settings, root)
    if scenario == "shapes":
        assert (root / "tmp" / "predictions" / "a_splash.png").exists()
        assert (root / "tmp" / "show").is_dir()
    if scenario == "export":
        assert (root / "tmp" / "msrcnn_tiny_saved_model" / "saved_model.pb").exists()
        assert (root / "tmp" / "maskrcnn_800.onnx").stat().st_size > 100e6
    if scenario == "torchvision_model":
        assert list((root / "tmp" / "predictions").glob("*.mp4"))


def test_reference_environment(tmp_path):
    """The torchvision venv's commands, where that venv exists (tests never install it)."""
    python = REFERENCE_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{REFERENCE_VENV} does not exist (README: Golden fixtures)")
    check = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True)
    if check.returncode:
        pytest.skip(f"{REFERENCE_VENV} has no working torchvision")
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("*.pyc"))
    out = subprocess.run(
        [str(python), "tests/testdata/make_golden_boxes.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
