//! Llama decoder (SmolLM2-135M-Instruct) built from GGUF weights. Stub until the loader lands.
