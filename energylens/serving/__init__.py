"""serving stage of energylens."""
