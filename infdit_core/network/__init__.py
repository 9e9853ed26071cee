"""The Inf-DiT network: config, layers, block attention and its kernels, the frontier store, the model, CLIP, FLOPs, compile."""
