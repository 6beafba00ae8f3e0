"""Golden outputs of torchvision's maskrcnn_resnet50_fpn on seeded weights.

Run in a venv with torch 2.13 (CUDA build, runs on CPU) and torchvision 0.28, from the repo root:
    python tests/testdata/make_golden_maskrcnn.py
It writes
  tests/testdata/torchvision_maskrcnn_spec.json: the 360 state-dict names, shapes and dtypes of
    maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91) (BatchNorm2d
    backbone, hence `num_batches_tracked`), read by tests/seeded_weights.py;
  tests/testdata/golden/maskrcnn.npz with, for each image i:
    image{i}            uint8 [H, W, 3], the input (stored: the fixture is the pixels);
    image_hw{i}         int [2], size after torchvision's resize (unpadded);
    det{i}_boxes        float32 [N, 4] xyxy in original pixels;
    det{i}_labels       int64 [N], det{i}_scores float32 [N];
    det{i}_masks        uint8 [N, ceil(H * W / 8)], np.packbits of the pasted masks >= 0.5
                        (msrcnn's `mask_threshold` convention), flattened row-major;
    prop{i}_boxes       float32 [P, 4] RPN proposals in resized-input pixels, by descending
                        objectness, prop{i}_scores float32 [P] their sigmoid objectness;
  and seed, min_size, max_size.

The model runs in eval mode with min_size=256, max_size=320 on one image at a time (so its
padding equals msrcnn's single-image padding). The three images all pad to 256 x 320, so
msrcnn compiles its detector once: 256 x 320 (not resized), 300 x 400 (resized down to
240 x 320) and 208 x 272 (resized up to 244 x 320).
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # tests/, for seeded_weights

import seeded_weights  # noqa: E402

OUT = HERE / "golden" / "maskrcnn.npz"
SEED = seeded_weights.DEFAULT_SEED
MIN_SIZE, MAX_SIZE = 256, 320
IMAGE_SIZES = ((256, 320), (300, 400), (208, 272))


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with structure: gradients, stripes, filled shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3))
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        period = 8 + 10 * rng.random()
        image[..., c] = (
            128 + 60 * (a * yy / height + b * xx / width) + 20 * np.sin(xx / period + phase)
        )
    # Shapes may leave the frame, so some objects touch the border.
    for _ in range(12):
        color = rng.uniform(0, 255, 3)
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        ry, rx = rng.uniform(0.05, 0.35) * height, rng.uniform(0.05, 0.35) * width
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        image[inside] = 0.3 * image[inside] + 0.7 * color
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_spec(model: torch.nn.Module) -> None:
    """One tensor per line, so that a changed layout reads well in a diff."""
    rows = [
        "    " + json.dumps([name, list(t.shape), str(t.dtype).removeprefix("torch.")])
        for name, t in model.state_dict().items()
    ]
    text = (
        "{\n"
        '  "model": "torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, '
        'weights_backbone=None, num_classes=91)",\n'
        f'  "torchvision": {json.dumps(torchvision.__version__)},\n'
        '  "tensors": [\n' + ",\n".join(rows) + "\n  ]\n}\n"
    )
    seeded_weights.SPEC_PATH.write_text(text)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
    ).eval()
    write_spec(model)
    weights = seeded_weights.state_dict(seeded_weights.load_spec(), SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)

    # torchvision's RPN returns boxes only; keep the scores filter_proposals computes.
    captured = {}
    filter_proposals = model.rpn.filter_proposals

    def capture(*args, **kwargs):
        boxes, scores = filter_proposals(*args, **kwargs)
        captured["boxes"], captured["scores"] = boxes[0], scores[0]
        return boxes, scores

    model.rpn.filter_proposals = capture
    transform = model.transform
    out = {"seed": np.int64(SEED), "min_size": np.int64(MIN_SIZE), "max_size": np.int64(MAX_SIZE)}
    for i, (h, w) in enumerate(IMAGE_SIZES):
        image = make_image(h, w, seed=100 + i)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            det = model([tensor])[0]
            resized = transform([tensor])[0].image_sizes[0]
        masks = (det["masks"][:, 0] >= 0.5).numpy().reshape(len(det["scores"]), -1)
        out[f"image{i}"] = image
        out[f"image_hw{i}"] = np.asarray(resized, np.int64)
        out[f"det{i}_boxes"] = det["boxes"].numpy().astype(np.float32)
        out[f"det{i}_labels"] = det["labels"].numpy().astype(np.int64)
        out[f"det{i}_scores"] = det["scores"].numpy().astype(np.float32)
        out[f"det{i}_masks"] = np.packbits(masks, axis=1)
        out[f"prop{i}_boxes"] = captured["boxes"].numpy().astype(np.float32)
        out[f"prop{i}_scores"] = captured["scores"].numpy().astype(np.float32)
        print(
            f"image {i}: {h}x{w} -> {tuple(resized)}, {len(det['scores'])} detections, "
            f"{len(captured['scores'])} proposals"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
