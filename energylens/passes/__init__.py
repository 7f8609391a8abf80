"""passes stage of energylens."""
