//! KIP-848 server-side partition assignors: uniform and range.
