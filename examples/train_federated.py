"""Train with the other sites through secure aggregation (diff it with train_single.py).

    python examples/train_federated.py SITE.toml SHARD OF

SITE.toml is this site's file from `mpc-agg init`; every site runs this script at once.
"""

import sys

import torch
from sklearn.datasets import load_digits

from mpc_agg.torch import SecureAggOptimizer
from peers.background import BackgroundPeer

shard, of = (int(sys.argv[-2]), int(sys.argv[-1])) if len(sys.argv) >= 3 else (0, 1)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
x_train, y_train = x[:1400][shard::of], y[:1400][shard::of]
x_test, y_test = x[1400:], y[1400:]

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
peer = BackgroundPeer.open(sys.argv[1])
optimizer = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), peer)
generator = torch.Generator().manual_seed(shard)

for _ in range(100):
    batch = torch.randint(0, len(x_train), (32,), generator=generator)
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
    loss.backward()
    optimizer.step()

with torch.no_grad():
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
print(f"test accuracy {accuracy:.4f}")
