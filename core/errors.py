"""The error of a bad setting: raised before any work, its message one line that names the flag,
the value and what is valid."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the flag, the value and what is valid."""
