"""Benchmarks of the engine: `python -m sdvar_core.bench <sub-command>` (see `cli` for the list).

One job per module, lower ones first:
    tables     markdown output, marked sections of a file, the load meter
    pairs      the pairs measured: embedded, random of its shapes, random official-size
    harness    the rows of the tables and the interleaved measuring loop
    costmodel  expected calls and speed-up of speculative decoding from per-call costs (pure)
    report     the mode table and the quality report (prose around measured rows)
    patterns   every mode's call pattern on official-size models, forced acceptance through the engine
    floors     weight-read / FLOP floors, single-model timing, profiling
    plans      the γ planner: target only vs fixed γ vs auto, and its prediction for measured call patterns
    official   ours against the official VAR code's own loop (a checkout given on the command line)
    cli        argument parsing and the sub-commands
"""
