"""Network I/O: SSRF vetting, the pinned HTTPS client, x5u and RCD fetches, caches, CRLs, Redis."""
