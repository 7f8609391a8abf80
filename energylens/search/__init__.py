"""search stage of energylens."""
