"""Classical recommendation baselines on a user x item interaction matrix, for the benchmark: most popular,
item-kNN (cosine), EASE (Steck 2019) and matrix factorisation trained with BPR. Each returns a [users, items] score
matrix, to be ranked with the seen items excluded (``ranking.top_k``)."""
from __future__ import annotations

import numpy as np
import torch


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Binary float32 matrix with a 1 for every (user row, item row) pair."""
    x = np.zeros((n_users, n_items), dtype=np.float32)
    x[users, items] = 1.0
    return x


def popularity(x: np.ndarray) -> np.ndarray:
    """Every user gets the items' training interaction counts."""
    return np.broadcast_to(x.sum(0), x.shape).copy()


def item_knn(x: np.ndarray) -> np.ndarray:
    """Sum of cosine similarities (co-occurrence over sqrt of the two counts) to the user's items."""
    counts = np.sqrt(x.sum(0)) + 1e-9
    similarity = (x.T @ x) / counts[:, None] / counts[None, :]
    np.fill_diagonal(similarity, 0.0)
    return x @ similarity


def ease(x: np.ndarray, l2: float = 500.0) -> np.ndarray:
    """EASE: the item-item weights B = argmin ||X - XB||² + l2 ||B||², diag(B) = 0, in closed form."""
    gram = (x.T @ x).astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return (x @ b).astype(np.float32)


def bpr_mf(x: np.ndarray, dim: int = 64, epochs: int = 60, lr: float = 5e-3, l2: float = 1e-2, batch_size: int = 1024,
           seed: int = 0) -> np.ndarray:
    """Matrix factorisation (user and item factors, item bias) trained with BPR: each observed pair against a
    uniformly drawn item the user has not interacted with; Adam, L2 on the factors of the batch."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    users, items = np.nonzero(x)
    n_users, n_items = x.shape
    p = torch.nn.Parameter(torch.randn(n_users, dim, generator=generator) * 0.01)
    q = torch.nn.Parameter(torch.randn(n_items, dim, generator=generator) * 0.01)
    b = torch.nn.Parameter(torch.zeros(n_items))
    optimiser = torch.optim.Adam([p, q, b], lr=lr)
    seen = x.astype(bool)
    for _ in range(epochs):
        order = rng.permutation(len(users))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            u, i = users[batch], items[batch]
            j = rng.integers(0, n_items, len(batch))
            for _ in range(5):  # redraw negatives the user has seen
                clash = seen[u, j]
                if not clash.any():
                    break
                j[clash] = rng.integers(0, n_items, int(clash.sum()))
            u_, i_, j_ = (torch.from_numpy(a) for a in (u, i, j))
            pu, qi, qj = p[u_], q[i_], q[j_]
            margin = (pu * (qi - qj)).sum(1) + b[i_] - b[j_]
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            loss = loss + l2 * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return (p @ q.T + b).numpy()
