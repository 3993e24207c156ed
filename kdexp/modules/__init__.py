"""kdexp's LightningModules: one skeleton (`base.EpochModule`: epoch metrics, best state, metric sink, resume)
that every module extends, `distill.DistillModule` (a frozen teacher, a trainable student and a method's named
loss terms) and the optimiser a recipe asks for (`optim`)."""
