"""The SMTP front: listeners, one adapter around aiosmtpd, relay policy, hardening.

Modules, each small and named by concern (sans-IO where it decides something):

- ``listener``: ``start_listeners(config, ...) -> ListenerGroup`` for the composition root;
  connection and DATA-transfer limits;
- ``session``: ``MissiveSMTP``, the aiosmtpd ``SMTP`` subclass (EHLO, AUTH, MAIL, RCPT,
  streaming DATA into the spool; 250 only after the spool commit);
- ``envelope``: MAIL/RCPT arguments and ESMTP parameters (RFC 1870, 6152, 6531, 3461);
- ``data``: the DATA receiver (end of data, dot-unstuffing, bare CR/LF, line length, SIZE);
- ``policy``: who may relay what to whom (submission, relay clients, ``[inbound] accept``);
- ``replies``: typed ``SmtpReply`` refusals and their one conversion to reply lines;
- ``tls``: SSL contexts and client-certificate validation;
- ``throttle``: AUTH failure throttling per IP and per login;
- ``users``, ``passwords``, ``users_cli``: submission logins (``missive users``);
- ``listeblanche``, ``dnmatch``, ``listeblanche_cli``: the ANS liste blanche.

Trust level: faces the network; holds no private key but the TLS ones.
"""
