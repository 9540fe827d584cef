"""The commands (train, eval, data, report, predict, bench, gpu_check): parse, call, print, exit codes.

Each imports torch, Lightning and the model code only once it runs, so that `--help` and TAB completion
answer at once.
"""
