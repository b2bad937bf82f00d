"""Exports the networks `tests/import.rs` imports, with ONNX Runtime's logits beside them.

usage: make_models.py OUT_DIR FASHION_MNIST_DIR

Writes to OUT_DIR:
- plain.onnx, resnet18.onnx, mobilenetv2.onnx: random weights (seeded), torch.onnx.export
  (TorchScript exporter, opset 17, eval mode: BatchNorm is folded into the convs' biases);
- trained.onnx: plain.onnx's network trained briefly on Fashion-MNIST (a few thousand images);
- images.bin: the first 100 test images, float32 [100, 1, 28, 28] (pixel / 255);
- <name>.ort.bin: ONNX Runtime's float32 logits [100, 10] for each model;
- trained.json: PyTorch's test accuracy of trained.onnx on the first EVAL_IMAGES test images.
"""

import gzip
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

IMAGES = 100
TRAIN_IMAGES = 4000
EVAL_IMAGES = 1000


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Plain(nn.Module):
    """conv-BN-ReLU ×2, max-pool, conv (bias, no BN) + ReLU, global pooling, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16), conv_bn(16, 32, stride=2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout, act=None)
        self.down = conv_bn(cin, cout, k=1, stride=stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        sc = x if self.down is None else self.down(x)
        return self.relu(self.conv2(self.conv1(x)) + sc)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 for 1×28×28: a 3×3 stride-1 stem, no max-pool, 10 classes."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 64)
        blocks, cin = [], 64
        for i, w in enumerate([64, 128, 256, 512]):
            for j in range(2):
                blocks.append(Basic(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Inverted(nn.Module):
    def __init__(self, cin, cout, t, stride):
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [conv_bn(cin, hidden, k=1, act=nn.ReLU6)]
        layers += [conv_bn(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, k=1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's inverted residuals (ReLU6, linear bottlenecks) at a small width."""

    def __init__(self):
        super().__init__()
        blocks, cin = [conv_bn(1, 16, act=nn.ReLU6)], 16
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)]:
            for i in range(n):
                blocks.append(Inverted(cin, c, t, s if i == 0 else 1))
                cin = c
        blocks += [conv_bn(cin, 128, k=1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def randomise_bn(model, gen):
    """Non-trivial BatchNorm statistics, so that folding them is tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def relu6_clips(model, images):
    """Whether any ReLU6 of `model` sees an input above 6 on `images`."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].max().item())) for m in model.modules() if isinstance(m, nn.ReLU6)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return max(seen) > 6.0


def export(model, path):
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model, (x,), path, dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
    )


def train(model, images, labels):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(2):
        perm = torch.randperm(len(images))
        for i in range(0, len(images), 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(images[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main():
    out, data = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    test_x = torch.from_numpy(idx(os.path.join(data, "t10k-images-idx3-ubyte.gz")).astype(np.float32) / 255.0).unsqueeze(1)
    test_y = torch.from_numpy(idx(os.path.join(data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64))
    images = test_x[:IMAGES].contiguous()
    images.numpy().astype("<f4").tofile(os.path.join(out, "images.bin"))
    nets = {"plain": Plain(), "resnet18": ResNet18(), "mobilenetv2": MobileNetV2()}
    with torch.no_grad():
        for m in nets.values():
            randomise_bn(m, gen)
        # A wider stem scale, so that ReLU6's cap is reached (and tested) on these images.
        nets["mobilenetv2"].features[0][1].weight.mul_(20)
    assert relu6_clips(nets["mobilenetv2"].eval(), images), "no ReLU6 input exceeds 6: the cap would go untested"
    train_x = torch.from_numpy(idx(os.path.join(data, "train-images-idx3-ubyte.gz"))[:TRAIN_IMAGES].astype(np.float32) / 255.0).unsqueeze(1)
    train_y = torch.from_numpy(idx(os.path.join(data, "train-labels-idx1-ubyte.gz"))[:TRAIN_IMAGES].astype(np.int64))
    trained = Plain()
    train(trained, train_x, train_y)
    nets["trained"] = trained
    with torch.no_grad():
        acc = (trained(test_x[:EVAL_IMAGES]).argmax(1) == test_y[:EVAL_IMAGES]).double().mean().item()
    with open(os.path.join(out, "trained.json"), "w") as f:
        json.dump({"test_images": EVAL_IMAGES, "accuracy": acc}, f)
    for name, m in nets.items():
        path = os.path.join(out, f"{name}.onnx")
        export(m, path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"image": images.numpy()})[0]
        logits.astype("<f4").tofile(os.path.join(out, f"{name}.ort.bin"))
    print("exported", ", ".join(nets), "; trained accuracy", acc)


if __name__ == "__main__":
    main()
