"""costmodel stage of energylens."""
