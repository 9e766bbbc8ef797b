"""Model loading for the SD1.5 backend: checkpoints, LoRAs, VAEs, ControlNets and TAESD, all offline.

Submodules import torch/diffusers; this package itself imports nothing heavy, so the server can import it
cheaply.
"""
