"""A data matrix whose rows arrive in batches, as a :class:`~pipeline.linalg.operators.LinearOperator`.

:class:`StreamedRows` turns a re-iterable stream of row batches (the h-space activations of a sample store,
too large to hold at once) into operators whose every product is one float64 pass over the stream, so that
:func:`pipeline.linalg.solvers.randomized_svd` can compute a PCA without forming the data matrix
(docs/methods.md, "Linear algebra").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from pipeline.io.errors import ConfigError
from pipeline.io.validation import as_int
from pipeline.linalg.operators import LinearOperator

BatchFactory = Callable[[], Iterable[torch.Tensor]]
"""A zero-argument callable returning a fresh iterable of row batches (one full pass over the data)."""


class StreamedRows:
    """A data matrix X [N, d], or B matrices X_b [N, d] sharing their rows, whose rows arrive in batches.

    ``batches()`` returns a fresh iterable over row batches, [n_i, d] for one matrix or [n_i, B, d] for a
    stack (for h: X_t holds h at step t of every sample, batches [n, T, D]). Every call must yield the same
    rows in the same order, because ``rmatmat`` pairs its input rows with the stream by position. Each
    batch is moved to ``device``, converted to float64 and centred by ``mean`` there (peak memory about
    three float64 copies of one batch); every product is accumulated in float64 in one pass, with memory
    O(d b) beyond the batch and the output.

    Each pass also recounts the rows (a different count from ``num_rows`` is an error) and accumulates
    ``squared_norms``, the sum of squared centred entries of each matrix ([B], or [] for one matrix).
    """

    def __init__(
        self,
        batches: BatchFactory,
        *,
        mean: torch.Tensor | None = None,
        num_rows: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Wrap ``batches``; ``mean`` [d] or [B, d] is subtracted from every row; ``num_rows`` N is counted
        by a first pass when None (one extra pass over the stream; pass it when known)."""
        if num_rows is not None and (as_int(num_rows) is None or num_rows < 1):
            raise ConfigError(f"num_rows {num_rows!r}: must be a positive integer")
        self.batches = batches
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.mean = None if mean is None else mean.to(device=self.device, dtype=torch.float64)
        self.squared_norms: torch.Tensor | None = None
        self._row_shape: tuple[int, ...] | None = None
        self._row_shape = self._first_row_shape()
        if self.mean is not None and tuple(self.mean.shape) != self.row_shape:
            raise ConfigError(f"mean shape {tuple(self.mean.shape)}: expected the row shape {self.row_shape}")
        self._num_rows = num_rows
        if num_rows is None:
            self.scan()

    @property
    def num_rows(self) -> int:
        """N, the number of rows of every matrix."""
        assert self._num_rows is not None
        return self._num_rows

    @property
    def stacked(self) -> bool:
        """True for a stack of B matrices (batches [n, B, d]), False for one matrix (batches [n, d])."""
        return len(self.row_shape) == 2

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(d,) for one matrix, (B, d) for a stack."""
        assert self._row_shape is not None
        return self._row_shape

    def scan(self) -> None:
        """One pass that only counts the rows and accumulates ``squared_norms``."""
        for _ in self._pass():
            pass

    def operator(self) -> LinearOperator:
        """X as an operator of shape (N, d), or for a stack the concatenation [X_1 ... X_B] of shape
        (N, B d) (column index b d + j is column j of X_b); vectors V are [B d, k]."""
        blocks, width = self._blocks_and_width()

        def matmat(vectors: torch.Tensor) -> torch.Tensor:
            blocked = vectors.reshape(blocks, width, -1)
            out = torch.empty((self.num_rows, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out[rows] = torch.einsum("nbd,bdk->nk", x, blocked)
            return out

        def rmatmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((blocks, width, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out += torch.einsum("nbd,nk->bdk", x, vectors[rows])
            return out.reshape(blocks * width, -1)

        def gram(vectors: torch.Tensor) -> torch.Tensor:
            blocked = vectors.reshape(blocks, width, -1)
            out = torch.zeros_like(blocked)
            for _, x in self._pass():
                out += torch.einsum("nbd,nk->bdk", x, torch.einsum("nbd,bdk->nk", x, blocked))
            return out.reshape(blocks * width, -1)

        return LinearOperator(
            shape=(self.num_rows, blocks * width), matmat=matmat, rmatmat=rmatmat, gram=gram, device=self.device
        )

    def stacked_operator(self) -> LinearOperator:
        """The B matrices X_b as a batch of operators of shape (N, d), batch_shape (B,); vectors [B, d, k].

        Solving them together reads the stream once per product for all B (instead of B times).
        """
        if not self.stacked:
            raise ConfigError(
                f"stacked_operator: the stream yields batches of rows of shape {self.row_shape}, not a stack [n, B, d]"
            )
        blocks, width = self.row_shape

        def matmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.empty((blocks, self.num_rows, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out[:, rows] = torch.einsum("nbd,bdk->bnk", x, vectors)
            return out

        def rmatmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((blocks, width, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out += torch.einsum("nbd,bnk->bdk", x, vectors[:, rows])
            return out

        def gram(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(vectors)
            for _, x in self._pass():
                out += torch.einsum("nbd,bnk->bdk", x, torch.einsum("nbd,bdk->bnk", x, vectors))
            return out

        return LinearOperator(
            shape=(self.num_rows, width),
            matmat=matmat,
            rmatmat=rmatmat,
            gram=gram,
            batch_shape=(blocks,),
            device=self.device,
        )

    def _blocks_and_width(self) -> tuple[int, int]:
        return (self.row_shape[0], self.row_shape[1]) if self.stacked else (1, self.row_shape[0])

    def _first_row_shape(self) -> tuple[int, ...]:
        for batch in self.batches():
            return self._check_layout(batch)
        raise ConfigError("batches: the stream yielded no batch")

    def _check_layout(self, batch: torch.Tensor) -> tuple[int, ...]:
        if not isinstance(batch, torch.Tensor) or batch.dim() not in (2, 3) or batch.shape[0] < 1:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ConfigError(f"batch {shape}: expected a tensor [n, d] or [n, B, d] with n >= 1")
        row_shape = tuple(batch.shape[1:])
        if self._row_shape is not None and row_shape != self._row_shape:
            raise ConfigError(
                f"batch shape {tuple(batch.shape)}: rows of shape {row_shape}, expected {self._row_shape}"
            )
        return row_shape

    def _pass(self) -> Iterable[tuple[slice, torch.Tensor]]:
        """One pass: yields (row slice, centred float64 batch [n, B, d] on ``device``) and updates the counts."""
        offset = 0
        squared_norms: torch.Tensor | None = None
        for batch in self.batches():
            self._check_layout(batch)
            x = batch.to(device=self.device, dtype=torch.float64)
            if self.mean is not None:
                x = x - self.mean
            if not self.stacked:
                x = x.unsqueeze(1)
            if self._num_rows is not None and offset + len(x) > self._num_rows:
                raise ConfigError(f"batches: the stream yielded more than num_rows = {self._num_rows} rows")
            batch_norms = x.square().sum(dim=(0, 2))
            squared_norms = batch_norms if squared_norms is None else squared_norms + batch_norms
            yield slice(offset, offset + len(x)), x
            offset += len(x)
        if offset == 0 or squared_norms is None:
            raise ConfigError("batches: the stream yielded no batch")
        if self._num_rows is None:
            self._num_rows = offset
        elif offset != self._num_rows:
            raise ConfigError(
                f"batches: the stream yielded {offset} rows, expected num_rows = {self._num_rows} "
                "(every pass must yield the same rows)"
            )
        self.squared_norms = squared_norms if self.stacked else squared_norms[0]
