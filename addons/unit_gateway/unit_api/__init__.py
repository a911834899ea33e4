"""What the gateway knows of Unit's API, with no state: its route table and token scopes
(``routes``, read from ``data/``), the identities a placeholder token names
(``identity``) and the PASETO tokens Unit issues (``paseto``). The lowest layer: it imports no
other part of the gateway."""
