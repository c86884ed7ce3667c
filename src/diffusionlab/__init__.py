"""diffusionlab: train, sample and evaluate diffusion models."""
