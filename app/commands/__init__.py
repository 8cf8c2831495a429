"""The `dqe-cir` subcommands, one module per side: training (data, pretrain, train, eval, export; the
`train` extra), serving (index, search, doctor, serve; the `serve` extra) and demo (both)."""
