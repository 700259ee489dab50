"""A replay buffer of whole episodes, sampled as PyMARL2 samples them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from benchmarl_pow.episodes.layout import EpisodeStorageTransform


class DistinctSampler(Sampler):
    """Each batch: distinct items drawn uniformly without replacement, batches independent.

    Written by hand because TorchRL's samplers draw with replacement (``RandomSampler``) or walk
    one permutation across batches (``SamplerWithoutReplacement``, whose consecutive batches
    are not independent); PyMARL2 draws every batch afresh without replacement
    (pow_spec.md §1.3). Uses torch's global generator, so it is seeded with the experiment.
    """

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        size = len(storage)
        if size < batch_size:
            raise RuntimeError(
                f"cannot draw {batch_size} distinct episodes from a buffer holding {size}"
            )
        return torch.randperm(size)[:batch_size], {}

    def _empty(self) -> None:
        pass

    def dumps(self, path) -> None:  # stateless
        pass

    def loads(self, path) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def make_episode_buffer(
    capacity: int,
    batch_size: int,
    shifted_keys: Sequence[NestedKey],
    device: torch.device | str = "cpu",
) -> TensorDictReplayBuffer:
    """A ring buffer of ``capacity`` episodes (rows ``[L + 1]``) yielding ``batch_size`` distinct
    episodes per sample, cut after the longest one (see :mod:`benchmarl_pow.episodes.layout`)."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity, device=device),
        sampler=DistinctSampler(),
        batch_size=batch_size,
        transform=EpisodeStorageTransform(shifted_keys),
    )


def replay_dump_dir(checkpoint: str | Path) -> Path:
    """Where the replay of ``checkpoint_N.pt`` is dumped: ``checkpoint_N.buffers/<group>``."""
    return Path(checkpoint).with_suffix(".buffers")


def replay_dump_cut_short(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` has a replay dump beside it that is not whole (no dump: False)."""
    dump = replay_dump_dir(checkpoint)
    return dump.is_dir() and not replay_dump_is_complete(dump)


def replay_dump_is_complete(folder: str | Path) -> bool:
    """Whether ``checkpoint_N.buffers`` (one sub-folder per group, written by
    ``ReplayBuffer.dumps``) is whole: TorchRL writes each group's ``buffer_metadata.json`` last.
    Dumps are written under a temporary name and renamed when complete
    (``EpisodeExperiment._save_experiment``); an older version wrote them in place, so a kill
    during the dump could leave one cut short."""
    groups = [p for p in Path(folder).iterdir() if p.is_dir()] if Path(folder).is_dir() else []
    return bool(groups) and all((g / "buffer_metadata.json").is_file() for g in groups)
