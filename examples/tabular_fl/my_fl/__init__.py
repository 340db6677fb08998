"""An example project on flower-hydra-runner: tabular data, a model, a task and a strategy of its own."""
