"""Fine-tuning that keeps a checkpoint's compression."""
