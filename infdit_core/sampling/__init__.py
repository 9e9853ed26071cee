"""Image in, image out: noise schedules, solvers, the block-wise denoiser, colour fix, the pipeline, out-of-memory recovery."""
