"""Translators: conditional models that map one embedding space into another.

Translator classes share the interface in :mod:`~modtrans.translators.base`. The diffusion
building blocks they use live apart, so that steps, η, guidance and solver change without
touching training:

- :mod:`~modtrans.translators.schedules` — noise schedules (pure functions) and
  :class:`~modtrans.translators.schedules.NoiseSchedule`;
- :mod:`~modtrans.translators.diffusion` — forward process, parameterisation conversions
  and the training loss;
- :mod:`~modtrans.translators.denoisers` — the conditional denoising networks;
- :mod:`~modtrans.translators.samplers` — reverse-process samplers (DDIM, DPM-Solver++),
  pure functions with one shared signature.

Importing the package registers the built-in methods (:mod:`~modtrans.translators.baselines`,
:mod:`~modtrans.translators.ced`), whichever of its modules a caller imports first.
"""

from modtrans.translators import baselines, ced  # noqa: F401  (register their methods)
