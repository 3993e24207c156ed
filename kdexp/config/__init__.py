"""What a run is told to do: the typed schema Hydra checks while composing (`schema`), the one parse of the
composed config into frozen settings (`parse`), value validation (`validate`), the registries of models,
methods and data sets (`registry`), the plug-ins that add to them (`plugins`) and the error every bad value
raises (`errors`). Nothing here imports torch, so a bad config fails before any heavy import."""
