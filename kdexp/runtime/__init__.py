"""How Lightning runs here: process ranks under DDP (`distributed`) and the callbacks and loggers a config
adds to kdexp's own (`trainer_extras`)."""
