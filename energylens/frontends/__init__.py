"""frontends stage of energylens."""
