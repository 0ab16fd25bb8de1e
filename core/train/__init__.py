"""Training: continued pretraining, SFT and DPO as Accelerate jobs (config, data, recipes, callbacks, launcher)."""
