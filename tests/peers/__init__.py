"""Real-peer test fixtures: throwaway slapd, Postfix and Dovecot instances on loopback."""
