"""kdexp's one error type for bad configuration (a leaf: every layer may raise it)."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


class MatrixError(ConfigError):
    """Bad for every cell of a matrix (e.g. tuning seeds that overlap its evaluation seeds): a multirun stops at
    its first cell with exit 2 instead of failing each cell in turn."""
