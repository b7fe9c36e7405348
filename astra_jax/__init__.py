"""Coarse stage: DHCG, features, packing, ASTRA-MoE, training and prediction (JAX/Flax)."""


class RunDirError(ValueError):
    """A run directory that holds no usable model, or not the kind a command needs. Defined here,
    not beside training, so that the command line can catch it without importing JAX."""
