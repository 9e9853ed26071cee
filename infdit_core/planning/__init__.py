"""Planning a run before it starts: the block order, the memory estimate, the passes and the block batch."""
