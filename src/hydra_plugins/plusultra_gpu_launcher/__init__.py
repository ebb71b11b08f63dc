"""``hydra/launcher=joblib_gpus``: hydra-joblib-launcher with one GPU per worker process.

It knows Hydra, joblib and ``CUDA_VISIBLE_DEVICES``, nothing of plusultra. See docs/sweeps.md,
"One trial per GPU".
"""
