"""Small helpers shared by the kit's tools (records/, ablations/, bench/, compliance/, data/, tests/).

One job per module, no imports between them, nothing here imports the tools:

- ``kitlib.fileio``: write a file whole or not at all (temporary name, fsync, rename); say why a path cannot be
  written before any work starts.
- ``kitlib.stats``: seed statistics (mean, sample std, Welch, paired) and THE record-significance test of the
  challenge (>= 0.005 nats better at p < 0.01, one-sided).
- ``kitlib.procs``: a training script's command line (torchrun for several processes); start a command in its own
  process group and end the whole group (torchrun and its workers).
- ``kitlib.scripts``: import a script (e.g. a train_gpt.py) by its path, with one-line errors.
- ``kitlib.cli``: the tools' argparse: a usage error is one line on stderr, exit status 2.
"""
