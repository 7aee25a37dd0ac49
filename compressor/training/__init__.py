"""The training stages: objectives, the one training loop, the stage cache and the pipeline."""
