"""Coverage-guided fuzzing (atheris) of the parsers that face untrusted bytes.

One module per target, each with a pure `one_input(data: bytes)` that calls the production
code and lets only *unexpected* exceptions escape; `python -m fuzz.run` drives them.
"""
