"""Integrations with training frameworks, each behind its own extra.

- :mod:`esper_telemetry.integrations.sb3`: ``EsperCallback``, a Stable-Baselines3
  callback for ``PPO`` and sb3-contrib's ``RecurrentPPO`` (``pip install
  'esper-telemetry[sb3]'``).

Nothing is imported here: import the integration's own module.
"""
