"""HTTP and network helpers below every addon: JSON:API error answers (``jsonapi``), deadlines
(``deadlines``), sliding-window limits and ``Retry-After`` (``limits``), bounded body
decompression (``bodies``), header helpers (``headers``), proxy-mode groups (``modes``) and the
redirect-loop guard (``loops``)."""
