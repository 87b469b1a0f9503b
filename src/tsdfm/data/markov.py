"""The exact benchmark: an order-k Markov chain over V symbols with a known distribution.

Generative perplexity under a learned language model is only a proxy for sample quality.
Sampling training data from a chain whose probabilities we know gives the truth instead:
the exact log-likelihood of any sample, the exact entropy rate a perfect sampler must match,
and the exact n-gram distribution its samples must reproduce (DESIGN.md section 9).

Notation: V symbols, order k, S = V**k contexts. A context (k-gram) ``x_1 .. x_k`` has index
``c = sum_i x_i V**(k-i)`` (first token most significant), so appending a token x to the
context gives the (k+1)-gram index ``c * V + x`` and the next context ``(c * V + x) mod S``.
Every probability is float64: float32 categorical sampling measurably biases the numbers
this benchmark exists to report (DESIGN.md section 7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsdfm.errors import TsdfmError

# Largest table (entries) built for transitions or an n-gram distribution: 2**27 float64
# values = 1 GiB. Beyond that the "exact" benchmark stops being cheap, which is its point.
_MAX_TABLE = 2**27
_PARAMS = ("vocab_size", "order", "alpha", "eps", "seed")


def _as_int_array(seqs: Any) -> np.ndarray:
    """Samples as an int64 array [n, L]; accepts numpy arrays, torch tensors and lists."""
    if hasattr(seqs, "detach"):  # a torch tensor, without importing torch here
        seqs = seqs.detach().cpu().numpy()
    arr = np.asarray(seqs)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise TsdfmError(f"expected token sequences shaped [n, length], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TsdfmError(f"expected integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy -sum p log p in nats, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


def _window_index(arr: np.ndarray, n: int, base: int) -> np.ndarray:
    """Base-`base` index of every length-n window of each row: [rows, L - n + 1].

    Horner's rule over the n window offsets, index = sum_j x_{t+j} base**(n-1-j), so the
    cost is n vector operations instead of a Python loop over windows.
    """
    width = arr.shape[1] - n + 1
    idx = np.zeros((arr.shape[0], width), dtype=np.int64)
    for j in range(n):
        idx = idx * base + arr[:, j : j + width]
    return idx


class MarkovChain:
    """An order-k chain whose rows are Dirichlet(alpha) draws mixed with eps uniform mass.

    Row for context c: ``P[c] = (1 - eps) * Dirichlet(alpha * 1_V) + eps / V``. Small alpha
    makes rows sparse (a few likely successors, like text); eps keeps every transition
    possible and caps one token's NLL near ``ln(V / eps)``. The chain is fully determined by
    ``(vocab_size, order, alpha, eps, seed)``; sequences start from the stationary k-gram
    distribution so every position has the same marginal.
    """

    def __init__(self, vocab_size: int, order: int, alpha: float, eps: float, seed: int):
        check_chain_params(vocab_size, order, alpha, eps, seed)
        self.vocab_size = int(vocab_size)
        self.order = int(order)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.seed = int(seed)
        V, S = self.vocab_size, self.num_contexts
        rng = np.random.default_rng(self.seed)
        rows = rng.dirichlet(np.full(V, self.alpha), size=S)
        rows /= rows.sum(axis=1, keepdims=True)
        transition = (1.0 - self.eps) * rows + self.eps / V
        self.transition = transition / transition.sum(axis=1, keepdims=True)
        self.stationary = _stationary(self.transition, V, self.order)
        self._cdf: np.ndarray | None = None

    @property
    def num_contexts(self) -> int:
        """S = V**k, the number of k-gram contexts (states of the k-gram chain)."""
        return self.vocab_size**self.order

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int, seed: int) -> np.ndarray:
        """Draw n independent sequences [n, length] (int64), vectorised over n.

        The first k tokens are one draw from the stationary k-gram distribution; each later
        token is an inverse-CDF draw from its context's row. All rows are searched at once by
        offsetting row c's CDF by c, which keeps the flattened CDF sorted.
        """
        if n < 0 or length < 1:
            raise TsdfmError(f"sample needs n >= 0 and length >= 1, got n={n}, length={length}")
        V, k, S = self.vocab_size, self.order, self.num_contexts
        rng = np.random.default_rng(seed)
        out = np.empty((n, length), dtype=np.int64)
        if n == 0:
            return out
        start = np.searchsorted(np.cumsum(self.stationary), rng.random(n), side="right")
        state = np.minimum(start, S - 1).astype(np.int64)
        for j in range(min(k, length)):
            out[:, j] = (state // V ** (k - 1 - j)) % V
        flat_cdf = self._offset_cdf()
        for t in range(k, length):
            pos = np.searchsorted(flat_cdf, state + rng.random(n), side="right")
            token = np.clip(pos - state * V, 0, V - 1)
            out[:, t] = token
            state = (state * V + token) % S
        return out

    def _offset_cdf(self) -> np.ndarray:
        if self._cdf is None:
            cdf = np.cumsum(self.transition, axis=1)
            cdf[:, -1] = 1.0  # round-off must not leave a gap a uniform draw can land in
            self._cdf = (cdf + np.arange(self.num_contexts)[:, None]).ravel()
        return self._cdf

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, seqs: Any) -> np.ndarray:
        """Exact log-likelihood of each sequence, float64 [n].

        ``log p(x) = log pi(x_1..x_k) + sum_{t>k} log P(x_t | x_{t-k}..x_{t-1})``.
        """
        arr = self._check_seqs(seqs, self.order)
        V, k = self.vocab_size, self.order
        with np.errstate(divide="ignore"):
            first = np.log(self.stationary[_window_index(arr[:, :k], k, V)[:, 0]])
            if arr.shape[1] == k:
                return first
            log_t = np.log(self.transition).ravel()
        return first + log_t[_window_index(arr, k + 1, V)].sum(axis=1)

    def nll_per_token(self, seqs: Any) -> np.ndarray:
        """-log p(x) / length for each sequence: the per-token truth-NLL."""
        arr = self._check_seqs(seqs, self.order)
        return -self.log_prob(arr) / arr.shape[1]

    def _check_seqs(self, seqs: Any, min_len: int) -> np.ndarray:
        arr = _as_int_array(seqs)
        if arr.shape[1] < min_len:
            raise TsdfmError(
                f"sequences of length {arr.shape[1]} are too short for this chain: need at "
                f"least {min_len} tokens; sample longer sequences"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise TsdfmError(
                f"token ids must lie in [0, {self.vocab_size}) for this chain, got range "
                f"[{arr.min()}, {arr.max()}]; strip special tokens such as [MASK] first"
            )
        return arr

    # ------------------------------------------------------------------ reference values
    def entropy_rate(self) -> float:
        """H = sum_c pi(c) H(P[c]) in nats/token: the mean NLL per transition of true text."""
        return float(self.stationary @ _entropy(self.transition))

    def initial_entropy(self) -> float:
        """H(pi) over k-grams: the expected NLL of a sequence's first k tokens together."""
        return float(_entropy(self.stationary))

    def expected_nll_per_token(self, length: int) -> float:
        """What a perfect sampler scores at this length: (H(pi) + (L - k) H) / L."""
        if length < self.order:
            raise TsdfmError(f"length must be at least the order {self.order}, got {length}")
        return (self.initial_entropy() + (length - self.order) * self.entropy_rate()) / length

    # ------------------------------------------------------------------ n-gram statistics
    def ngram_distribution(self, n: int) -> np.ndarray:
        """Exact stationary distribution of n consecutive tokens, flattened base-V index.

        n < k: marginalise the stationary k-gram over its last k - n tokens. n > k: extend
        one token at a time, ``p(g x) = p(g) P[last k tokens of g, x]``.
        """
        V, k = self.vocab_size, self.order
        if n < 1:
            raise TsdfmError(f"n-gram length must be >= 1, got {n}")
        if V**n > _MAX_TABLE:
            raise TsdfmError(
                f"the {n}-gram table would hold V**n = {V**n} entries; use a smaller n"
            )
        if n <= k:
            return self.stationary.reshape(V**n, V ** (k - n)).sum(axis=1)
        dist = self.stationary
        S = self.num_contexts
        for _ in range(n - k):
            ctx = np.arange(dist.size) % S
            dist = (dist[:, None] * self.transition[ctx]).ravel()
        return dist

    def ngram_counts(self, seqs: Any, n: int) -> np.ndarray:
        """Counts of every length-n window pooled over all samples (flattened base-V)."""
        arr = self._check_seqs(seqs, n)
        if self.vocab_size**n > _MAX_TABLE:
            raise TsdfmError(f"the {n}-gram table is too large for V={self.vocab_size}")
        idx = _window_index(arr, n, self.vocab_size).ravel()
        return np.bincount(idx, minlength=self.vocab_size**n)

    def ngram_tv(self, seqs: Any, n: int) -> float:
        """Total variation 0.5 sum_g |f(g) - p(g)| between pooled window frequencies and the
        exact n-gram distribution.

        Pooling every window position is valid because sequences start from stationarity,
        so each position's n-gram marginal is the same p. Collapsing onto a few likely
        n-grams cannot lower this number, unlike a likelihood.
        """
        counts = self.ngram_counts(seqs, n)
        total = counts.sum()
        if total == 0:
            raise TsdfmError("ngram_tv needs at least one sequence")
        return float(0.5 * np.abs(counts / total - self.ngram_distribution(n)).sum())

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The parameters; they determine the chain completely."""
        return {name: getattr(self, name) for name in _PARAMS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MarkovChain:
        missing = [name for name in _PARAMS if name not in d]
        if missing:
            raise TsdfmError(
                f"Markov chain description lacks {missing}; it needs keys {list(_PARAMS)}"
            )
        return cls(**{name: d[name] for name in _PARAMS})

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in _PARAMS)
        return f"MarkovChain({args})"


def chain_floor_tv(chain: MarkovChain, num_samples: int, length: int, n: int, seed: int) -> float:
    """TV of `num_samples` true chain samples: the finite-sample floor a perfect sampler
    would also show, reported beside every model's TV."""
    return chain.ngram_tv(chain.sample(num_samples, length, seed), n)


def check_chain_params(vocab_size: int, order: int, alpha: float, eps: float, seed: int) -> None:
    """Raise TsdfmError for parameters that give no valid (or no affordable) chain."""
    if int(vocab_size) < 2:
        raise TsdfmError(f"markov vocab_size must be >= 2, got {vocab_size}")
    if int(order) < 1:
        raise TsdfmError(f"markov order must be >= 1, got {order}")
    if not alpha > 0:
        raise TsdfmError(f"markov alpha must be > 0, got {alpha}")
    if not 0 <= eps <= 1:
        raise TsdfmError(f"markov eps must lie in [0, 1], got {eps}")
    if int(seed) < 0:
        raise TsdfmError(f"markov seed must be >= 0, got {seed}")
    if int(vocab_size) ** (int(order) + 1) > _MAX_TABLE:
        raise TsdfmError(
            f"a chain with V={vocab_size}, k={order} needs V**(k+1) = "
            f"{int(vocab_size) ** (int(order) + 1)} transition entries; lower vocab_size or order"
        )


def _stationary(transition: np.ndarray, V: int, k: int) -> np.ndarray:
    """Stationary distribution pi of the k-gram chain, float64 [V**k].

    One step of the k-gram chain maps mass ``pi(c) P[c, x]`` on the (k+1)-gram ``c x`` to
    the context formed by its last k tokens, i.e. sums the joint over its first token:
    ``pi'(x_2..x_k x) = sum_{x_1} pi(x_1..x_k) P[x_1..x_k, x]``. Power iteration applies this
    map until the L1 change is at round-off level. eps > 0 makes the chain irreducible and
    aperiodic, so the fixed point exists and is unique; without it, or if iteration is slow,
    the exact linear system ``pi (I - T) = 0, sum pi = 1`` is solved when it is small.
    """
    S = V**k
    pi = np.full(S, 1.0 / S)
    for _ in range(20_000):
        new = (pi[:, None] * transition).reshape(V, S).sum(axis=0)
        new /= new.sum()
        delta = np.abs(new - pi).sum()
        pi = new
        if delta < 1e-14:
            return pi
    if S > 8192:
        raise TsdfmError(
            f"the stationary distribution of this chain did not converge (last L1 change "
            f"{delta:.2e}); use eps > 0 so every transition is possible"
        )
    return _stationary_direct(transition, V, k)


def _stationary_direct(transition: np.ndarray, V: int, k: int) -> np.ndarray:
    """Solve pi T = pi with sum(pi) = 1 exactly from the dense k-gram transition matrix T."""
    S = V**k
    T = np.zeros((S, S))
    rows = np.repeat(np.arange(S), V)
    cols = (rows * V + np.tile(np.arange(V), S)) % S
    np.add.at(T, (rows, cols), transition.ravel())
    A = np.vstack([T.T - np.eye(S), np.ones((1, S))])
    b = np.zeros(S + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()
