"""Many images: jobs and outputs, the runner with progress and resume, torchrun ranks, image files."""
