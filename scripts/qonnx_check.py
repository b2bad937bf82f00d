#!/usr/bin/env python3
"""Runs a QONNX file written by `nce export --qonnx` with the qonnx package's executor.

Any network nce exports: tests/onnx.rs runs it on the committed ResNet-20 and on a synthetic
MobileNetV2 (`Conv` nodes with `group` for its depthwise convs).

usage: qonnx_check.py MODEL.onnx IMAGES.u8 C H W
IMAGES.u8 holds N images of C*H*W uint8 pixels. Each image is fed as pixel/255 through
qonnx.core.onnx_exec.execute_onnx (which runs the Quant nodes itself); prints the integer logits
(real logits divided by the file's nce.logit_scale, rounded) as JSON.
Needs `qonnx` (scripts/setup-onnx-venv).
"""
import json
import sys

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes


def main():
    path, images, c, h, w = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    model = ModelWrapper(path)
    classes = json.loads(dict((p.key, p.value) for p in model.model.metadata_props)["nce.header"])["net"]["classes"]
    model.set_tensor_shape("image", [1, c, h, w])
    model.set_tensor_shape("logits", [1, classes])
    model = model.transform(InferShapes())
    unit = float(dict((p.key, p.value) for p in model.model.metadata_props)["nce.logit_scale"])
    x = np.fromfile(images, dtype=np.uint8).reshape(-1, c, h, w).astype(np.float32) / 255.0
    out = []
    for i in range(x.shape[0]):
        logits = execute_onnx(model, {"image": x[i : i + 1]})["logits"]
        out.append(np.rint(logits[0].astype(np.float64) / unit).astype(np.int64).tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
