import torch


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent, each a 1-element float tensor (Dassl's contract).

    Upstream flattens a transposed slice with ``.view`` and crashes for k > 1 on current
    PyTorch; we use ``reshape``.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
