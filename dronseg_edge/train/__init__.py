"""Training: the loop, losses, metrics, optimisers and schedules, logging."""
