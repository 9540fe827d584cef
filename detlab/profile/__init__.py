"""What a detector costs (cost: parameters, FLOPs) and how fast it runs under one protocol (speed)."""
