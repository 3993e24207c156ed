"""kdexp's LightningModules: a frozen teacher, a trainable student and a method's named loss terms
(`distill.DistillModule`), with the optimiser a recipe asks for."""
