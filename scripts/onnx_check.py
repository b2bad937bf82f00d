#!/usr/bin/env python3
"""Runs an ONNX file written by `nce export --onnx` in stock ONNX Runtime (Python).

Any network nce exports: tests/onnx.rs runs it on the committed ResNet-20 and on a synthetic
MobileNetV2 (grouped `ConvInteger` nodes for its depthwise convs).

usage: onnx_check.py MODEL.onnx IMAGES.u8 C H W
IMAGES.u8 holds N images of C*H*W uint8 pixels (the dataset's layout). Checks the file with
onnx.checker, feeds pixel/255 as the graph's `image` input and prints JSON: the metadata and
the integer logits (real logits divided by the file's nce.logit_scale, rounded).
Needs `onnx`, `onnxruntime` and `numpy` (scripts/setup-onnx-venv).
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    path, images, c, h, w = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    x = np.fromfile(images, dtype=np.uint8).reshape(-1, c, h, w).astype(np.float32) / 255.0
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": x})
    unit = float(meta["nce.logit_scale"])
    ints = np.rint(logits.astype(np.float64) / unit).astype(np.int64)
    print(json.dumps({"opset": model.opset_import[0].version, "metadata": meta, "logits": ints.tolist(), "ort": ort.__version__}))


if __name__ == "__main__":
    main()
