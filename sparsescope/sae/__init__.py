"""Sparse autoencoders on any site of any model: record activations once, train with sae-lens, evaluate in our
forward pass (reconstruction, CE-loss recovered, KL), ID vs OOD feature density, features vs neurons."""
