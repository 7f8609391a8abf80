"""runtime stage of energylens."""
