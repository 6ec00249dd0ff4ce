"""Generic training: the trainer (any method's model_fn under a tf.distribute strategy,
resumable), learning-rate schedules and optimizers, the SavedModel export, the SLURM cluster of
a multi-worker run, and the checks of a pretext config."""
