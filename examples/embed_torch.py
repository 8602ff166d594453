"""Train your own small PyTorch model with swarmnode's embedding API.

    python examples/embed_torch.py    # 3 sites in this process, 5 secure merge rounds

`train_site` is all a site adds to an ordinary training loop: a `SwarmNode`
and a blocking `node.merge(model, num_samples)` every `node.sync_every`
epochs. The merge is the secure one: updates are encrypted under the swarm's
threshold CKKS key and only the weighted mean is ever decrypted; the merged
weights are loaded back into `model` in place. Here three sites (breast cancer
data, uneven classes) train in threads, their nodes on one background event
loop over an in-memory network. A real site runs the same function with the
node its site.toml describes. The genesis records the model's structure (tensor names,
shapes, dtypes) and `merge` refuses any other; for your own network, use a factory spec,
``models.factory_model("mypackage.nets:build", 30, 2)`` (`model.factory` in site.toml):

    with swarmnode.SwarmNode.from_file("site.toml") as node:
        model = train_site(node, x, y)

User code: 39 lines (every non-blank, non-comment line after this docstring,
imports and the demo swarm included; tests/node/test_example_embed.py counts
them and runs main).
"""

import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import models
import swarmnode


def train_site(node: swarmnode.SwarmNode, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = models.build_network(node.config.model, torch.Generator().manual_seed(0))  # one common start
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(1, 1_000_000):
        for batch in torch.randperm(len(y)).split(32):  # one local epoch
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if epoch % node.sync_every == 0:  # sync point: blocks until the swarm's merge
            try:
                node.merge(model, num_samples=len(y))  # loads the merged weights into model
            except swarmnode.SwarmStopped:  # the swarm's stopping rule fired: final model loaded
                return model
    raise RuntimeError("the swarm never stopped")


def tensors(data: models.Dataset, fit_on: models.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    data = models.Preprocessor.fit(fit_on).transform(data)  # a site standardises with its own statistics
    return torch.tensor(data.features), torch.tensor(data.labels)


def main(rounds: int = 5) -> float:
    data = models.load_dataset("breast_cancer", positive_class="malignant")
    split = models.split_sites(data.labels, models.preset_scenario("uneven_class", 3), seed=0)
    sites = [split.site_data(data, i) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = models.mlp(30, 2, hidden=(16,))
        configs = swarmnode.create_local_swarm(tmp, 3, model=spec, max_rounds=rounds, sync_every=2)
        with swarmnode.local_swarm(configs) as nodes, ThreadPoolExecutor(3) as pool:
            trained = list(pool.map(lambda node, site: train_site(node, *tensors(site, site)), nodes, sites))
    x_test, y_test = tensors(split.test_data(data), sites[0])
    auc = float(roc_auc_score(y_test, trained[0](x_test).softmax(1)[:, 1].detach()))
    print(f"swarm model after {rounds} rounds: test ROC AUC {auc:.3f}")
    return auc


if __name__ == "__main__":
    main()
