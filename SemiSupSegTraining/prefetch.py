"""The next training batch drawn on a background thread while the device trains on this one.

The batches are the same sequence as without the thread: the thread is the only user of the crop
generator while a draw is pending, draws one batch at a time, in order. A checkpoint records the generator's
state from before the pending batch (which the training has not seen), so a resumed run draws that batch
again, as an uninterrupted one does.
"""

import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Tuple

import numpy as np
import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


class Prefetcher:
    """``draw()`` run one batch ahead on a thread; ``rng`` is the generator it draws from; ``initializer``
    runs first on the thread (e.g. selecting the training's GPU, so that pinned memory does not open a
    CUDA context on GPU 0)."""

    def __init__(self, draw: Callable[[], Batch], rng: np.random.Generator,
                 initializer: Optional[Callable[[], None]] = None):
        self._draw = draw
        self._rng = rng
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semisupseg-batch",
                                        initializer=initializer)
        self._pending: Optional[Future] = None
        self._pending_state: Optional[str] = None

    def next(self) -> Batch:
        if self._pending is None:
            self._submit()
        batch = self._pending.result()
        self._submit()
        return batch

    def _submit(self) -> None:
        self._pending_state = json.dumps(self._rng.bit_generator.state)  # the thread is idle here
        self._pending = self._pool.submit(self._draw)

    def rng_state(self) -> str:
        """The crop generator's state as the training has consumed it (JSON), for a checkpoint."""
        return self._pending_state if self._pending is not None else json.dumps(self._rng.bit_generator.state)

    def reset(self) -> None:
        """Drops the pending batch (before the generator is set to another state)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        self.reset()
        self._pool.shutdown(wait=True)
