"""Reference training code that publishes telemetry (torch; never a backend's internals)."""
