"""Coarse stage: DHCG, features, packing, ASTRA-MoE, training and prediction (JAX/Flax)."""
