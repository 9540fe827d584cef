"""Training: the LightningModule (module), optimizer and schedule (optim), callbacks (ema, pruning, tracking's
EvaluationLogger, checkpoint's RandomState), the logger (tracking), checkpoints, provenance, the console's blocks,
and one whole run (run.train)."""
