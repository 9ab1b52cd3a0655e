"""The annuaire: Missive's health-professional directory (see ``docs/annuaire.md``).

Modules: ``model`` (entries and mailboxes), ``mapping`` (entries <-> LDAP attributes),
``ldif`` (streaming RFC 2849 codec), ``backend`` (the async interface and its factory),
``ldif_backend`` and ``ldap_backend`` (the two backends), ``search`` (ranked,
paginated search), ``lookup`` and ``dnscert`` (certificate discovery for the secure
agent), ``cli`` (``missive annuaire``), ``importers`` (public extracts), ``schema/``
(the slapd schema). Importing the package loads nothing else.
"""
