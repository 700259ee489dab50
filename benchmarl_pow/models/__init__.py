"""BenchMARL models of this project: ``rnn_agent`` (PyMARL's recurrent agent network)."""

from __future__ import annotations

from benchmarl_pow.models.rnn_agent import (
    RnnAgent,
    RnnAgentConfig,
    RnnAgentSchema,
    agent_unroll,
    clear_buffer_pool,
)

MODELS = {"rnn_agent": RnnAgentConfig}


def register_models() -> None:
    """Add our models to BenchMARL's ``model_config_registry`` and store their Hydra schemas
    (group ``model``, name ``<name>_config``, which ``conf/model/<name>.yaml`` lists in its
    defaults). Idempotent.

    The stored schema is :class:`RnnAgentSchema`, i.e. ``RnnAgentConfig`` plus the ``name`` field
    that BenchMARL's ``load_model_config_from_hydra`` reads to pick the registry entry.
    """
    import benchmarl.models
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, config_class in MODELS.items():
        benchmarl.models.model_config_registry[name] = config_class
    store.store(name="rnn_agent_config", group="model", node=RnnAgentSchema)


__all__ = [
    "MODELS",
    "RnnAgent",
    "RnnAgentConfig",
    "RnnAgentSchema",
    "agent_unroll",
    "clear_buffer_pool",
    "register_models",
]
