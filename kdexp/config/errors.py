"""kdexp's one error type for bad configuration (a leaf: every layer may raise it)."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""
