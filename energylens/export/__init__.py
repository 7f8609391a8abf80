"""export stage of energylens."""
