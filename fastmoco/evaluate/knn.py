"""Weighted kNN monitor (Wu et al. 2018, as in the MoCo CIFAR demo): cosine similarity, top-k neighbours,
votes weighted by exp(sim / t). Features come from the frozen backbone in eval mode; each batch brings its own
labels, so an image a source replaced (an unreadable sample) is scored with the label of the image it shows."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def extract(backbone: torch.nn.Module, batches, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit features (M, D), labels (M,)) of the (images, labels) batches."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(F.normalize(backbone(x).float(), dim=1))
        labels.append(torch.as_tensor(y).cpu())
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)  # (M, D) unit rows, (M,)


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 512) -> torch.Tensor:
    """query (M, D), bank (B, D) unit rows; returns (M,) predicted labels."""
    bank_labels = bank_labels.to(bank.device)
    k = min(k, bank.shape[0])
    preds = []
    for i in range(0, query.shape[0], chunk):
        sim = query[i:i + chunk] @ bank.T  # (m, B) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / t).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)  # (m, classes)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(backbone, sets, k: int = 200, t: float = 0.1, channels_last: bool = False) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier; ``sets`` as returned by ``data.knn_sets()``."""
    bank_batches, query_batches = sets
    bank, bank_labels = extract(backbone, bank_batches(), channels_last)
    query, query_labels = extract(backbone, query_batches(), channels_last)
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(query, bank, bank_labels, num_classes, k, t)
    return 100.0 * (pred.cpu() == query_labels.cpu()).float().mean().item()
