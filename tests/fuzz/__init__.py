"""The fuzz harness (issue 13): the CLI over its option space, corrupt model folders, image files and training
states, each outcome classified by one oracle. ``tests/test_fuzz.py`` runs a short budget, ``bench/fuzz.py`` a
longer one."""
