"""PyTorch eager baseline for `cargo bench --bench train_step`: one W2A2 ResNet-20 training
step (batch 128, 3x32x32) with the same quantizers as nce (PACT activations, SAWB 2-bit
weights, 8-bit max-abs first conv and classifier, option-A shortcuts, SGD Nesterov).

Prints one JSON line: {"median_ms": ..., "steps": ..., "threads": ..., "torch": ...}."""
import json, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

def rnd(x):  # round half away from zero, as nce does
    return torch.sign(x) * torch.floor(x.abs() + 0.5)

class Pact(nn.Module):
    def __init__(self, bits=2, alpha=8.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha))
        self.qmax = 2 ** bits - 1
    def forward(self, x):
        y = 0.5 * (x.abs() - (x - self.alpha).abs() + self.alpha)
        q = rnd(y * self.qmax / self.alpha) * self.alpha / self.qmax
        return y + (q - y).detach()

def sawb(w, bits=2):
    c1, c2 = {2: (3.212, 2.178), 3: (7.962, 7.149)}.get(bits, (12.68, 12.80))
    with torch.no_grad():
        a = c1 * w.pow(2).mean().sqrt() - c2 * w.abs().mean()
    wc = torch.maximum(torch.minimum(w, a), -a)
    n = 2 ** bits - 1
    u = (wc / a + 1) / 2
    q = a * (2 * rnd(u * n) / n - 1)
    return wc + (q - wc).detach()

def maxabs8(w):
    with torch.no_grad():
        s = w.abs().max() / 127
    q = rnd(w / s) * s
    return w + (q - w).detach()

class QConv(nn.Module):
    def __init__(self, cin, cout, stride, bits, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.bits = bits
        self.act = Pact(2) if relu else None
    def forward(self, x):
        w = maxabs8(self.conv.weight) if self.bits == 8 else sawb(self.conv.weight, self.bits)
        y = self.bn(F.conv2d(x, w, None, self.conv.stride, 1))
        return self.act(y) if self.act is not None else y

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = QConv(cin, cout, stride, 2, True)
        self.b = QConv(cout, cout, 1, 2, False)
        self.stride, self.pad = stride, cout - cin
        self.act = Pact(2)
    def forward(self, x):
        y = self.b(self.a(x))
        sc = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad > 0:
            sc = F.pad(sc, (0, 0, 0, 0, 0, self.pad))
        return self.act(F.relu(y + sc))

class ResNet20(nn.Module):
    def __init__(self, cin=3, classes=10):
        super().__init__()
        self.conv1 = QConv(cin, 16, 1, 8, True)
        layers, c = [], 16
        for s, w in enumerate([16, 32, 64]):
            for i in range(3):
                layers.append(Block(c, w, 2 if s > 0 and i == 0 else 1)); c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
    def forward(self, x):
        x = self.layers(self.conv1(x))
        x = x.mean((2, 3))
        return F.linear(x, maxabs8(self.fc.weight), self.fc.bias)

def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = ResNet20()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.rand(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"median_ms": 1e3 * times[len(times) // 2], "steps": steps, "threads": threads, "torch": torch.__version__}))

if __name__ == "__main__":
    main()
