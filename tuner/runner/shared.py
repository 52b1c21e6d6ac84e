"""Hand the training data to worker processes through shared memory (no copy per worker)."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from tuner.data import Splits

ARRAYS = ("X_train", "y_train", "X_val", "y_val")


@dataclass(frozen=True)
class ArrayHandle:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class SharedData:
    """Picklable description of the training and validation arrays in shared memory."""

    arrays: dict[str, ArrayHandle]

    def attach(self) -> tuple[dict[str, np.ndarray], list[shared_memory.SharedMemory]]:
        """Map the arrays into this process (read-only views)."""
        views, blocks = {}, []
        for key, handle in self.arrays.items():
            block = _attach(handle.name)
            view = np.ndarray(handle.shape, dtype=handle.dtype, buffer=block.buf)
            view.flags.writeable = False
            views[key] = view
            blocks.append(block)
        return views, blocks


class SharedSplits:
    """Owner side: copies ``splits``' train/val arrays into shared memory; :meth:`close` frees it."""

    def __init__(self, splits: Splits) -> None:
        self._blocks: list[shared_memory.SharedMemory] = []
        handles = {}
        try:
            for key in ARRAYS:
                array = np.ascontiguousarray(getattr(splits, key))
                block = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
                self._blocks.append(block)
                np.ndarray(array.shape, dtype=array.dtype, buffer=block.buf)[...] = array
                handles[key] = ArrayHandle(block.name, array.shape, array.dtype.str)
        except BaseException:  # (too many open files, an interrupt): free the blocks made so far
            self.close()
            raise
        self.handle = SharedData(handles)

    def close(self) -> None:
        for block in self._blocks:
            block.close()
            try:
                block.unlink()
            except FileNotFoundError:
                pass
        self._blocks.clear()


def _attach(name: str) -> shared_memory.SharedMemory:
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        # Python < 3.13 registers the block again with the resource tracker the spawned workers
        # share with the runner; that is a no-op (a set), and the runner unlinks it.
        return shared_memory.SharedMemory(name=name)
