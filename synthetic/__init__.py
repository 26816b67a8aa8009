"""Demo and test data generators writing the published dataset layouts (the product never imports them)."""
