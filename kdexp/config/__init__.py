"""What a run is told to do: the typed schema Hydra checks while composing (`schema`, and each experiment kind's
settings in `variants`), stored in Hydra's ConfigStore (`store`), the rules a type cannot express (`rules`), the
one parse of the composed config into frozen settings (`parse`), value validation (`validate`), the registries
of models, methods and data sets (`registry`), the plug-ins that add to them (`plugins`), the keys each node
takes (`keys`), Hydra's compose errors as one line (`compose_errors`) and the error every bad value raises
(`errors`). Nothing here imports torch at module level, so a bad config fails before any heavy import."""
