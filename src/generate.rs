//! Sampling with a KV cache (stub; lands with the sampling work of issue 4).
