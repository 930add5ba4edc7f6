"""Code shared by producers, workers and the API: settings, models, producer, errors."""
