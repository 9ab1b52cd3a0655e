"""Importers of the public directory extracts into the annuaire (LDIF file or LDAP).

Role: ``missive annuaire import --format mssante|rpps FILE --to ldif:OUT | ldap`` turns
the ANS's open-data files, the MSSanté extract (one row per mailbox) and the RPPS
``PS_LibreAcces_Personne_activite`` file (one row per activity), into annuaire entries,
and ``synthetic`` writes realistic fake ones for tests and benchmarks.

Modules, in the order data flows:
- ``rows``: line reading, strict per-line UTF-8, column counts, header columns by name;
- ``mssante``, ``rpps``: the column specs (reproduced in their docstrings) and the row
  parsers (``key`` checks a row, calling the parser gives its ``merge.Draft``);
- ``checks``, ``postal``, ``geography``: value checks, address lines, departments and
  regions;
- ``partition``: the on-disk hash partition that bounds memory whatever the file size;
- ``merge``: several rows of one key into one entry;
- ``pipeline``: the two passes, bad-row reports, the summary; ``parallel``: pass 2 in
  worker processes for the LDIF output;
- ``sinks``, ``ldif_target``, ``ldap_target``: where entries go (atomic LDIF file,
  idempotent LDAP upserts);
- ``cli``: ``add_import_parser`` for ``missive annuaire``; ``progress``: the terminal
  progress line; ``formats``: the registry of formats.

Trust level: reads public extract data (untrusted input: every value is checked before
it reaches the model, the LDIF writer or the directory) and, for the LDAP target, the
configured bind password; writes only the output file or the configured directory.
"""
