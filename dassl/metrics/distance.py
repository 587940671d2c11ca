import torch
from torch.nn import functional as F


def compute_distance_matrix(input1, input2, metric="euclidean"):
    """Pairwise distances between the rows of two 2-D tensors (euclidean² or cosine)."""
    if input1.dim() != 2 or input2.dim() != 2 or input1.size(1) != input2.size(1):
        raise ValueError("expected two 2-D tensors of the same width")
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2)
    if metric == "cosine":
        return cosine_distance(input1, input2)
    raise ValueError(f"Unknown distance metric: {metric}. Please choose either 'euclidean' or 'cosine'")


def euclidean_squared_distance(input1, input2):
    m, n = input1.size(0), input2.size(0)
    mat1 = torch.pow(input1, 2).sum(dim=1, keepdim=True).expand(m, n)
    mat2 = torch.pow(input2, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    return mat1 + mat2 - 2 * input1 @ input2.t()


def cosine_distance(input1, input2):
    return 1 - torch.mm(F.normalize(input1, p=2, dim=1), F.normalize(input2, p=2, dim=1).t())
