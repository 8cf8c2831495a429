"""The application: the `dqe-cir` command, the end-to-end demo and served evaluation.

The one package that imports all the others (training, encoder, plugin, indexer), always lazily.
"""
