"""The Triton model repository as data: one description per served family, configs as ModelConfig messages,
publishing and hot swap. Torch-free: the S3 helper, the local stack and the CLI import it without the trainer's
models (exports are imported only when a run is published)."""
