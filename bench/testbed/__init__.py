"""The testbed world: every part of the LightGen loop with a real, CPU-sized counterpart.

`world` (shapes, palette, layouts, anti-aliased rendering), `captions` (grammar, parser, sampler with
a diversity knob, held-out combinations), `teacher` (`render`, `TestbedTeacher`), `prompts` (GenEval
metadata), `detector` (`TestbedDetector`, `PaletteColorClassifier`), `extractor` (FID features),
`grid` (the committed sample grid). `lightgen/` never imports this package.
"""
